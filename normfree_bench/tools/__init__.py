"""Tools beside the benchmark: the speed suite and the harness-overhead measurement.

Usage: ``from normfree_bench.tools.speed import run_speed``
"""
