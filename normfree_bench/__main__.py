"""``python -m normfree_bench``: the same as the ``normfree-bench`` command.

Usage: ``python -m normfree_bench baselines list``
"""

from normfree_bench.cli import main

raise SystemExit(main())
