"""``python -m normfree_bench``: the same as the ``normfree-bench`` command.

Usage: ``python -m normfree_bench baselines list``
"""

from normfree_bench.cli import main

if __name__ == "__main__":  # not when a spawned process (a data-parallel rank) re-imports it
    raise SystemExit(main())
