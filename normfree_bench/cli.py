"""The ``normfree-bench`` command line.

Usage::

    normfree-bench train --baseline dyt --steps 300 --lr 3e-3 --out runs/dyt
    normfree-bench baselines list
    normfree-bench baselines check dyt            # or a plugin file: baselines check my_norm.py

Bad input ends with exit code 2 and one line on stderr naming the problem and what is valid.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from normfree_bench.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load a baseline plugin file (repeatable)")


def _load_plugins(paths: list[str]) -> None:
    from normfree_bench.registry import discover, load_plugin

    discover()
    for path in paths:
        load_plugin(path)


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    train: dict[str, Any] = {}
    for key in ("lr", "steps", "seed", "device"):
        value = getattr(args, key, None)
        if value is not None:
            train[key] = value
    overrides: dict[str, Any] = {"train": train} if train else {}
    if getattr(args, "baseline", None):
        overrides["baseline"] = args.baseline
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from normfree_bench.config import load_run_config
    from normfree_bench.registry import get_baseline

    _load_plugins(args.plugin)
    cfg = load_run_config(args.config, _run_overrides(args))
    get_baseline(cfg.baseline)
    out = Path(args.out or f"runs/train-{cfg.baseline}")
    _check_writable(out)
    from normfree_bench.train import resolve_device, train_one, write_run

    resolve_device(cfg.train.device)
    result = train_one(cfg, progress_bar=not args.no_progress)
    write_run(out, cfg, result)
    status = f"DIVERGED at step {result.diverged_step} ({result.diverged_reason})" if result.diverged else "ok"
    print(f"{cfg.baseline}: final val loss {result.final_val_loss:.4f} (l0 {result.l0:.3f}), {status}; "
          f"{result.steps} steps, {result.tokens_per_s:,.0f} tokens/s, {result.params:,} params -> {out}")
    return 0


def _check_writable(out: Path) -> None:
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"output directory {out} is not writable; choose another with --out")


def cmd_baselines_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from normfree_bench.registry import get_baseline, list_baselines

    _load_plugins(args.plugin)
    rows = []
    for name in list_baselines():
        cls = get_baseline(name)
        hp = ", ".join(f"{k}={v}" for k, v in cls.hparams.items()) or "-"
        rows.append([name, cls.description, cls.paper, hp])
    print(tabulate(rows, headers=["baseline", "description", "paper", "hyperparameters"], tablefmt="github"))
    return 0


def cmd_baselines_check(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from normfree_bench.contract import check_baseline
    from normfree_bench.registry import get_baseline, load_plugin

    _load_plugins(args.plugin)
    target = args.target
    names = load_plugin(target) if target.endswith(".py") or Path(target).is_file() else [target]
    failed = 0
    for name in names:
        get_baseline(name)
        checks = check_baseline(name)
        failed += sum(not c.ok for c in checks)
        rows = [[c.name, "ok" if c.ok else "FAIL", c.detail] for c in checks]
        print(f"{name}:")
        print(tabulate(rows, headers=["check", "result", "detail"], tablefmt="github"))
    if failed:
        print(f"{failed} check(s) failed", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="normfree-bench", description="One Transformer, many normalization schemes.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one baseline once")
    p.add_argument("--baseline", help="registered baseline name (default: the config's, else layernorm)")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--lr", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", help="output directory (default runs/train-<baseline>)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    b = sub.add_parser("baselines", help="list or check baselines")
    bsub = b.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = bsub.add_parser("list", help="every baseline with its description and paper")
    _add_common(p)
    p.set_defaults(func=cmd_baselines_list)
    p = bsub.add_parser("check", help="run the contract checks on a tiny CPU model")
    p.add_argument("target", help="a baseline name or a plugin file")
    _add_common(p)
    p.set_defaults(func=cmd_baselines_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
