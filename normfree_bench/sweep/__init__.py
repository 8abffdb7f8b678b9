"""The LR sweep: the grid (grid.py), the driver that runs every baseline's study (driver.py), and the
worker loop that several processes or machines share (worker.py).

Usage: ``from normfree_bench.sweep.driver import run_sweep``
"""
