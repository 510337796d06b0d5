"""Training: the epoch loop (no Ray), single-file checkpoints, and the Ray Train glue (ray_job)."""
