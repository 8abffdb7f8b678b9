"""The tables of a run: the leaderboard's computation (leaderboard.py), its rendering (render.py), the
sweep's plots (plots.py), and the export of every table of a run directory (export.py).

Usage: ``from normfree_bench.tables.export import write_results``
"""
