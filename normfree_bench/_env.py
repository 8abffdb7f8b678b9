"""Process environment the package sets before torch loads; imported first by ``normfree_bench/__init__.py``.

Usage: nothing to call: ``import normfree_bench`` applies it (a value the user already set is kept).

- ``KINETO_LOG_LEVEL=6``: torch's profiler library (kineto) reads its log level once, when torch loads, and
  by default writes a line on stderr at every profile's start and stop (the speed suite profiles each of its
  model rows for the norm share) and, on a machine without a GPU, an ERROR that it found none. Its levels
  run from 0 (verbose) to 5 (those start and stop lines); at 6 it writes none of these. No effect when torch
  was imported before normfree_bench.
"""

import os

KINETO_LOG_LEVEL = "6"

os.environ.setdefault("KINETO_LOG_LEVEL", KINETO_LOG_LEVEL)
