"""Sweeps: the grid of runs, and the executors (local processes, inline, Ray) that run it."""
