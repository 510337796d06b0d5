"""Evaluation of mask sequences: shape descriptors, real-vs-synthetic comparison, overlap metrics.

- ``descriptors``: per-frame shape descriptors and per-sequence temporal descriptors (pure).
- ``overlap``: Dice, IoU and surface distances between two masks (pure).
- ``compare``: distribution distances, nearest-neighbour memorisation check, diversity (pure).
- ``plots``: matplotlib figures for the report.
- ``report``: the ``cellgen evaluate`` stage (reads sequences, runs the above, writes REPORT/).
"""
