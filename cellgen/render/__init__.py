"""Synthetic fluorescence microscopy of mask sequences (``cellgen render``; docs/render.md)."""
