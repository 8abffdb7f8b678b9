"""One training run: the LightningModule, the divergence guard, the diagnostics probe and its tensor
statistics, and the fault-injection callback the tests install.

Usage: ``from normfree_bench.training.train import train_one``
"""
