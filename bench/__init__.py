"""Benchmarks: `python -m bench [NAME ...] [--json]`.

Each prints ratios to a baseline measured in the same run.
"""
