"""The plugin API: what a baseline file imports (the `Baseline` class and its hooks, the registry, the
building blocks baselines hand to the model, and the invariants they may check at init).

Usage: ``from normfree_bench.core.baseline import Baseline``
"""
