"""Benchmarks run by hand, each as `python -m benchmarks.<name>` from the repo root; every one
takes --smoke (each family's TINY size, a few steps, one repeat), which tests/test_benchmarks.py
runs. What they share lives in benchmarks/common.py."""
