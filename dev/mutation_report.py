"""Summarise a mutmut run into results/mutation/: the score per module and every surviving mutant.

Usage: ``python dev/mutation_report.py [--out results/mutation] [--mutants DIR ...]`` after ``mutmut run``
(``make mutation`` runs both; several ``--mutants`` folders combine runs, the later verdict on a mutant winning)

Reads mutmut's per-file results (``mutants/**/*.py.meta``: exit code per mutant; 1 or 3 killed, 0 survived,
33/5 no test reached it, 36/24/152/255 timeout) and ``dev/equivalent_mutants.yaml`` (mutant name: the one-line
reason it cannot change behaviour). Score per module = killed / (mutants - equivalent - not checked); a timeout
counts as killed (the mutant hangs the tests), a mutant no test reaches counts as survived. When only a
sample of a module's mutants was checked (dev/mutation_sample.py), the score estimates the module's and its
95 % Wilson interval is given (none when every mutant was checked: the score is then exact). Writes
``scores.md``, ``scores.json`` and ``survivors.md`` (each survivor's diff, and the reason when it is equivalent).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml
from mutmut.mutation.diff_apply import get_diff_for_mutant

KILLED, TIMEOUT, SURVIVED, NO_TESTS = {1, 3}, {24, 36, 152, 255, -24}, {0}, {5, 33}
ROOT = Path(__file__).resolve().parents[1]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n (n > 0)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def score(counts: dict) -> tuple[float | None, list[float] | None]:
    """(score, its 95 % interval when the module was sampled) from a row's counts."""
    judged = counts["mutants"] - counts["equivalent"] - counts["not_checked"]
    if not judged:
        return None, None
    killed = counts["killed"] + counts["timeout"]
    return killed / judged, list(wilson(killed, judged)) if counts["not_checked"] else None


def module_of(meta: Path, mutants: Path) -> str:
    return str(meta.relative_to(mutants)).removesuffix(".meta")


def diff_of(name: str, mutants: Path, module: str) -> str:
    return get_diff_for_mutant(name, path=mutants / module).replace(f"{mutants}/", "")


def verdicts(runs: list[Path]) -> dict[str, dict[str, tuple[int | None, Path]]]:
    """module -> mutant -> (exit code, the mutants folder it comes from); a later run's verdict on a mutant
    replaces an earlier one (a re-check after tests were added), a later "not checked" keeps the earlier."""
    out: dict[str, dict[str, tuple[int | None, Path]]] = {}
    for mutants in runs:
        for meta in sorted(mutants.rglob("*.py.meta")):
            module = module_of(meta, mutants)
            mine = out.setdefault(module, {})
            for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
                if code is not None or name not in mine:
                    mine[name] = (code, mutants)
    return out


def collect(runs: list[Path], equivalent: dict[str, str]) -> tuple[list[dict], list[dict]]:
    rows, survivors = [], []
    for module, by_name in sorted(verdicts(runs).items()):
        codes = {name: code for name, (code, _) in by_name.items()}
        if not codes:
            continue
        counts = {"mutants": len(codes), "killed": 0, "timeout": 0, "survived": 0, "no_tests": 0,
                  "equivalent": 0, "not_checked": 0}
        for name, code in sorted(codes.items()):
            if code is None:
                counts["not_checked"] += 1
                continue
            if code in KILLED or code in TIMEOUT:
                counts["killed" if code in KILLED else "timeout"] += 1
                continue
            if name in equivalent:
                counts["equivalent"] += 1
            else:
                counts["survived" if code in SURVIVED else "no_tests"] += 1
            survivors.append({"module": module, "mutant": name, "status": "survived" if code in SURVIVED
                              else "no tests" if code in NO_TESTS else f"exit {code}",
                              "equivalent": equivalent.get(name),
                              "diff": diff_of(name, by_name[name][1], module)})
        counts["score"], counts["ci95"] = score(counts)
        rows.append({"module": module, **counts})
    return rows, survivors


def write(out: Path, rows: list[dict], survivors: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    total = {k: sum(r[k] for r in rows) for k in ("mutants", "killed", "timeout", "survived", "no_tests",
                                                   "equivalent", "not_checked")}
    # Pooled over modules sampled equally, not in proportion to their size: no interval for the whole.
    total["score"], total["ci95"] = score(total)[0], None
    (out / "scores.json").write_text(json.dumps({"modules": rows, "total": total}, indent=2) + "\n")
    head = ("| module | mutants | killed | timeout | survived | no tests | equivalent | not checked | score "
            "| 95 % CI (sampled) |")
    lines = [head, "|" + "---|" * 10]
    for r in [*rows, {"module": "**all**", **total}]:
        shown = "-" if r["score"] is None else f"{100 * r['score']:.1f} %"
        ci = "-" if r["ci95"] is None else f"{100 * r['ci95'][0]:.0f}–{100 * r['ci95'][1]:.0f} %"
        lines.append(f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['timeout']} | {r['survived']} | "
                     f"{r['no_tests']} | {r['equivalent']} | {r['not_checked']} | {shown} | {ci} |")
    (out / "scores.md").write_text("\n".join(lines) + "\n\nscore = (killed + timeout) / (mutants - equivalent - "
                                   "not checked); the interval is the 95 % Wilson interval of a sampled "
                                   "module's score (none where every mutant was checked)\n")
    parts = ["# Surviving mutants\n"]
    for s in survivors:
        why = f"equivalent: {s['equivalent']}" if s["equivalent"] else s["status"]
        parts.append(f"## {s['mutant']} ({why})\n\n```diff\n{s['diff']}\n```\n")
    (out / "survivors.md").write_text("\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "results" / "mutation"))
    p.add_argument("--mutants", action="append", help="a mutmut mutants/ folder (default: ./mutants); repeat it "
                   "to combine runs, a later run's verdict on a mutant replacing an earlier one")
    args = p.parse_args(argv)
    runs = [Path(m) for m in (args.mutants or [str(ROOT / "mutants")])]
    for mutants in runs:
        if not mutants.is_dir():
            print(f"error: {mutants} does not exist; run `mutmut run` (or `make mutation`) first", file=sys.stderr)
            return 2
    equivalent = yaml.safe_load((ROOT / "dev" / "equivalent_mutants.yaml").read_text()) or {}
    rows, survivors = collect(runs, equivalent)
    write(Path(args.out), rows, survivors)
    print((Path(args.out) / "scores.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
