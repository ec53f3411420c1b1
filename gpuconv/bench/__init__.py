"""Benchmarks: named problem sets (layers.py), timing, peers and reports for `python -m gpuconv bench`."""
