"""The results store: the run directory and its record, each trial's record in Optuna, the storages,
and the provenance of a run.

Usage: ``from normfree_bench.store.rundir import read_run``
"""
