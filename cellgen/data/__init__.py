"""Data: procedural phantoms, masks -> SDF volumes, point shards and their reader."""
