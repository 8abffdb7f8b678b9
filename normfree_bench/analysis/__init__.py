"""Numerical-stability analysis of a finished run (``normfree-bench analyze``) and its plots.

Usage: ``from normfree_bench.analysis.analyze import analyze_run``
"""
