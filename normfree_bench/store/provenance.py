"""Provenance of a run: package versions, git SHA, device (and the CPU's vector width and caches), corpus fingerprint.

Usage: ``write_json(run_dir / "provenance.json", collect_provenance(device="cpu", corpus=corpus))``
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from normfree_bench.core.fused import cpu_features

PACKAGES = ("normfree-bench", "torch", "lightning", "torchmetrics", "optuna", "timm", "numpy", "scipy", "tabulate")


def git_sha() -> str | None:
    """The commit of the checkout this package runs from, with ``-dirty`` if it has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


VECTOR_ISAS = ("avx512f", "avx2", "avx", "sse2", "sve", "asimd")  # widest first: x86, then Arm


def cpu_summary() -> dict[str, Any]:
    """What a CPU timing depends on beyond the model name (one "AMD EPYC" may be a Zen 1 with AVX2 and an 8 MiB
    L3, or a Zen 4 with AVX-512 and 32 MiB): the widest vector instruction set among ``VECTOR_ISAS`` and the
    cache sizes per level, from Linux's /proc/cpuinfo and /sys; empty where those are not there."""
    out: dict[str, Any] = {}
    flags = cpu_features()
    if flags:
        out["vector_isa"] = next((isa for isa in VECTOR_ISAS if isa in flags), None)
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        caches[f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")] = size
    if caches:
        out["caches"] = caches
    return out


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def collect_provenance(device: str, corpus_sha256: str, corpus_source: str) -> dict[str, Any]:
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_sha": git_sha(),
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_summary(),
        "torch_threads": torch.get_num_threads(),
        "corpus_sha256": corpus_sha256,
        "corpus_source": corpus_source,
    }
