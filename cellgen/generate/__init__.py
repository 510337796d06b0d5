"""``cellgen generate``: latent and rotation sampling, voxelization, the Ray actor pool, writers."""
