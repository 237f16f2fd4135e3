"""Benchmarks behind bench/*.py: each measures the project against a baseline run in the same process
tree and returns one dict, which the script prints as one JSON line (see BENCHMARKS.md)."""
