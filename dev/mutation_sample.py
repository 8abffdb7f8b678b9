"""A seeded random sample of mutmut's mutants, the same number from each module, for a run that fits in an hour.

Usage: ``python dev/mutation_sample.py --per-module 20 [--seed 0]``  (prints mutant names, one per line)

Reads the mutant names mutmut generated (``mutants/**/*.py.meta``; ``mutmut run`` with any name list, or
``make mutation-sample``, generates them first). Each module's mutants are sorted by name and
``--per-module`` of them drawn with ``random.Random(seed)``; a module with fewer mutants gives all of them.
The score of a sample estimates the module's score: dev/mutation_report.py gives its 95 % Wilson interval.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sample(mutants: Path, per_module: int, seed: int) -> list[str]:
    names: list[str] = []
    for meta in sorted(mutants.rglob("*.py.meta")):
        keys = sorted(json.loads(meta.read_text())["exit_code_by_key"])
        names += keys if len(keys) <= per_module else sorted(random.Random(seed).sample(keys, per_module))
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-module", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mutants", default=str(ROOT / "mutants"))
    args = p.parse_args(argv)
    if args.per_module < 1:
        print(f"error: --per-module must be at least 1, got {args.per_module}", file=sys.stderr)
        return 2
    mutants = Path(args.mutants)
    if not mutants.is_dir():
        print(f"error: {mutants} does not exist; run `mutmut run` once to generate the mutants", file=sys.stderr)
        return 2
    print("\n".join(sample(mutants, args.per_module, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
