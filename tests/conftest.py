"""Shared fixtures: one corpus cache for the whole session, quiet Lightning, CPU threads."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # One on-disk corpus cache per test session, outside the user's cache.
    if "NORMFREE_BENCH_CACHE" not in os.environ:
        import tempfile

        os.environ["NORMFREE_BENCH_CACHE"] = tempfile.mkdtemp(prefix="nfb-cache-")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg():
    from normfree_bench.contract import tiny_config

    return tiny_config()
