"""Choosing per-layer ratios: manual lists now; greedy and TAR selection build on them."""
