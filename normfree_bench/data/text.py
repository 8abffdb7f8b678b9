"""Real text, offline: Python's standard library source (or a local text file/folder) as bytes.

Usage::

    corpus = load_corpus(DataConfig(corpus="stdlib"))         # or corpus="~/books/" / "notes.txt"
    loader = DataLoader(TrainWindows(corpus.train, context_length=128, batch_size=16, seed=0),
                        batch_size=None)                          # yields whole (x, y) batches
    val = val_batches(corpus, context_length=128, cfg=DataConfig())

The tokenizer is the identity on bytes: vocabulary 256, token = byte value.

Corpus sources:

* ``"stdlib"``: every ``*.py`` file of the running interpreter's standard library, minus test
  suites and installed packages (see `stdlib_files`).
* a folder: every regular, non-hidden file (recursively) whose first 8 KiB decode as UTF-8 and
  that is not empty.
* a single text file.

Splits: folders (and the stdlib) are split by file: a file is validation when
``int(sha256(relative_posix_path).hexdigest(), 16) % 1000 < val_fraction * 1000``, which does not
depend on file order. A single file, or a folder whose file split leaves a split empty, is split by
bytes instead: the last ``val_fraction`` of the bytes is validation. Within a split, files are
concatenated in sorted relative-path order, joined by `FILE_SEPARATOR` (one ``b"\\n"``, between
files, not after the last one).

Cache: each split is written once as a raw uint8 file and opened with ``numpy.memmap(mode="r")``::

    <root>/corpus/<key>/{train.bin, val.bin, meta.json}

where ``<root>`` is ``$NORMFREE_BENCH_CACHE`` if set, else ``$XDG_CACHE_HOME/normfree-bench``, else
``~/.cache/normfree-bench``, and ``<key>`` hashes the source kind, its absolute path, the Python
version (stdlib), the sorted file list with sizes and mtimes, and ``val_fraction``. Files are
written atomically (temp file + ``os.replace``), ``meta.json`` last, so its presence marks a
complete entry.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from normfree_bench.config import DataConfig
from normfree_bench.errors import UserError
from normfree_bench.io import write_json

VOCAB_SIZE = 256
FILE_SEPARATOR = b"\n"
CACHE_FORMAT = 1
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
SNIFF_BYTES = 8192
_CHUNK = 1 << 20
_VALID_CORPUS = "valid: 'stdlib' or a path to a text file or folder"

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Corpus:
    """The two splits as read-only uint8 arrays, plus the fingerprint and the cache's meta.json.

    ``meta`` is meta.json (source, split_by "file"/"bytes", per-split bytes/sha256/file lists) plus
    ``cache_dir``, the entry's folder.
    """

    train: np.ndarray
    val: np.ndarray
    sha256: str  # corpus fingerprint: sha256 of (train sha256 + val sha256)
    meta: dict[str, Any] = field(default_factory=dict)
    vocab: int = VOCAB_SIZE  # bytes; a token-file corpus (normfree_bench.data.tokens) has its tokenizer's

    @property
    def vocab_size(self) -> int:
        return self.vocab


@dataclass(frozen=True)
class _Source:
    """What to read: ``kind`` is "stdlib", "folder" or "file"; ``files`` are relative POSIX paths."""

    kind: str
    root: Path
    files: tuple[str, ...]

    def path(self, rel: str) -> Path:
        return self.root / rel if self.kind != "file" else self.root

    def describe(self) -> str:
        if self.kind == "stdlib":  # not its folder: where Python is installed is the machine's, not the data's
            return f"Python {sys.version.split()[0]} standard library ({len(self.files)} files)"
        return f"{self.kind} {self.root}"


# --------------------------------------------------------------------------- file discovery


def _is_excluded(rel: Path) -> bool:
    return bool(EXCLUDED_DIRS.intersection(rel.parts)) or rel.name.startswith("test_")


def stdlib_files() -> list[Path]:
    """The running interpreter's stdlib ``*.py`` files (absolute), sorted by relative POSIX path.

    Test suites and installed packages are excluded: any path component in `EXCLUDED_DIRS`, or a
    file name starting with ``test_``.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]  # prune, e.g. site-packages
        found += [Path(dirpath, n) for n in filenames if n.endswith(".py")]
    found = [p for p in found if p.is_file() and not _is_excluded(p.relative_to(root))]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _looks_like_text(path: Path) -> bool:
    """True when the file's first 8 KiB decode as UTF-8 (a character cut at 8 KiB is fine)."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError:
        return False
    return True


def _folder_files(root: Path) -> list[str]:
    """Non-hidden, non-empty UTF-8 text files under `root`, as sorted relative POSIX paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath, name)
            if name.startswith(".") or not path.is_file() or path.stat().st_size == 0:
                continue
            if _looks_like_text(path):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def _resolve_source(corpus: str) -> _Source:
    """Turn ``DataConfig.corpus`` into a `_Source`, raising `UserError` for missing/empty input."""
    if corpus == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"]).resolve()
        files = tuple(p.relative_to(root).as_posix() for p in stdlib_files())
        if not files:
            raise UserError(f"no standard-library sources found under {root}; {_VALID_CORPUS}")
        return _Source("stdlib", root, files)
    path = Path(corpus).expanduser()
    if not path.exists():
        raise UserError(f"corpus path not found: {corpus}; {_VALID_CORPUS}")
    path = path.resolve()
    if path.is_dir():
        files = tuple(_folder_files(path))
        if not files:
            raise UserError(f"corpus folder {corpus} has no text files (non-hidden, non-empty, UTF-8); "
                            f"{_VALID_CORPUS}")
        return _Source("folder", path, files)
    if not path.is_file():
        raise UserError(f"corpus path {corpus} is not a regular file or folder; {_VALID_CORPUS}")
    if path.stat().st_size == 0:
        raise UserError(f"corpus file {corpus} is empty (0 bytes); valid: a non-empty text file or folder")
    if not _looks_like_text(path):
        raise UserError(f"corpus file {corpus} is not UTF-8 text; valid: a UTF-8 text file or folder")
    return _Source("file", path, (path.name,))


# --------------------------------------------------------------------------- cache location & key


def cache_root() -> Path:
    """``$NORMFREE_BENCH_CACHE``, else ``$XDG_CACHE_HOME/normfree-bench``, else ``~/.cache/...``."""
    override = os.environ.get("NORMFREE_BENCH_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "normfree-bench"


def is_validation_file(rel_path: str, val_fraction: float) -> bool:
    """The file-split rule: deterministic in the relative POSIX path, independent of file order."""
    digest = hashlib.sha256(rel_path.encode("utf-8")).hexdigest()
    return int(digest, 16) % 1000 < val_fraction * 1000


def _cache_key(source: _Source, val_fraction: float) -> str:
    listing = []
    for rel in source.files:
        st = source.path(rel).stat()
        listing.append([rel, st.st_size, st.st_mtime_ns])
    blob = {
        "format": CACHE_FORMAT,
        "kind": source.kind,
        "path": str(source.root),
        "python": sys.version if source.kind == "stdlib" else None,
        "files": listing,
        "val_fraction": val_fraction,
        "separator": FILE_SEPARATOR.decode(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- building the cache


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read corpus file {path}: {exc.strerror}") from exc


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_concat(path: Path, files: list[Path]) -> list[tuple[int, int]]:
    """Atomically write the files joined by `FILE_SEPARATOR`; return each file's byte span."""
    tmp, spans, offset = tmp_name(path), [], 0
    with open(tmp, "wb") as out:
        for i, src in enumerate(files):
            if i:
                out.write(FILE_SEPARATOR)
                offset += len(FILE_SEPARATOR)
            data = _read(src)
            out.write(data)
            spans.append((offset, offset + len(data)))
            offset += len(data)
    os.replace(tmp, path)
    return spans


def _copy_range(src: Path, dst: Path, start: int, stop: int) -> None:
    """Atomically write bytes ``[start, stop)`` of `src` to `dst`."""
    tmp = tmp_name(dst)
    with open(src, "rb") as f, open(tmp, "wb") as out:
        f.seek(start)
        left = stop - start
        while left > 0 and (chunk := f.read(min(_CHUNK, left))):
            out.write(chunk)
            left -= len(chunk)
    os.replace(tmp, dst)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _val_byte_count(n: int, val_fraction: float) -> int:
    """Bytes at the end that become validation: round(n * val_fraction), leaving both sides >= 1."""
    return min(max(round(n * val_fraction), 1), max(n - 1, 0))


def _byte_split(source: _Source, entry: Path, val_fraction: float) -> tuple[list[str], list[str]]:
    """Split the concatenation of all files by bytes; a file straddling the cut is in both lists."""
    whole = entry / f".all.{os.getpid()}.bin"
    try:
        spans = _write_concat(whole, [source.path(r) for r in source.files])
        total = spans[-1][1]
        cut = total - _val_byte_count(total, val_fraction)
        _copy_range(whole, entry / "train.bin", 0, cut)
        _copy_range(whole, entry / "val.bin", cut, total)
    finally:
        whole.unlink(missing_ok=True)
    train = [r for r, (start, _) in zip(source.files, spans, strict=True) if start < cut]
    val = [r for r, (_, end) in zip(source.files, spans, strict=True) if end > cut]
    return train, val


def _has_bytes(source: _Source, files: list[str]) -> bool:
    return any(source.path(r).stat().st_size for r in files)


def _file_split(source: _Source, entry: Path, val_fraction: float) -> tuple[list[str], list[str]] | None:
    """Split by file (see `is_validation_file`); None when either split would hold no bytes."""
    val = [r for r in source.files if is_validation_file(r, val_fraction)]
    train = [r for r in source.files if not is_validation_file(r, val_fraction)]
    if not _has_bytes(source, train) or not _has_bytes(source, val):
        return None
    _write_concat(entry / "train.bin", [source.path(r) for r in train])
    _write_concat(entry / "val.bin", [source.path(r) for r in val])
    return train, val


def _split_meta(path: Path, files: list[str]) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path), "file_count": len(files),
            "files": files}


def _build(source: _Source, key: str, entry: Path, val_fraction: float) -> dict[str, Any]:
    """Write train.bin, val.bin and (last) meta.json into `entry`; return the meta dictionary."""
    entry.mkdir(parents=True, exist_ok=True)
    split = None if source.kind == "file" else _file_split(source, entry, val_fraction)
    mode = "file" if split else "bytes"
    train, val = split or _byte_split(source, entry, val_fraction)
    meta: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "key": key,
        "source": {"kind": source.kind, "path": str(source.root), "description": source.describe(),
                   "python": sys.version.split()[0] if source.kind == "stdlib" else None},
        "val_fraction": val_fraction,
        "split_by": mode,
        "separator": FILE_SEPARATOR.decode(),
        "vocab_size": VOCAB_SIZE,
        "train": _split_meta(entry / "train.bin", train),
        "val": _split_meta(entry / "val.bin", val),
    }
    meta["sha256"] = fingerprint(meta["train"]["sha256"], meta["val"]["sha256"])
    write_json(entry / "meta.json", meta)
    return meta


def fingerprint(train_sha256: str, val_sha256: str) -> str:
    """The corpus fingerprint: sha256 of the two split hashes, train first."""
    return hashlib.sha256((train_sha256 + val_sha256).encode()).hexdigest()


def _read_cached(entry: Path) -> dict[str, Any] | None:
    """The entry's meta.json if the entry is complete (split files present with recorded sizes)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        ok = all((entry / f"{s}.bin").stat().st_size == meta[s]["bytes"] for s in ("train", "val"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if ok and meta.get("format") == CACHE_FORMAT else None


def open_split(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot memory-map an empty file
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="r")


# --------------------------------------------------------------------------- loading

_LOADED: dict[tuple[str, float, str], Corpus] = {}


def _memo_key(cfg: DataConfig) -> tuple[str, float, str]:
    name = cfg.corpus if cfg.corpus == "stdlib" else str(Path(cfg.corpus).expanduser().absolute())
    return name, cfg.val_fraction, str(cache_root())


def clear_loaded() -> None:
    """Forget the corpora loaded in this process (the on-disk cache is kept)."""
    _LOADED.clear()


def load_corpus(cfg: DataConfig) -> Corpus:
    """Load (building the on-disk cache on first use) the corpus named by ``cfg.corpus``.

    Memoised per process by (corpus, val_fraction, cache root), so a sweep reads it once.
    """
    memo = _memo_key(cfg)
    if memo not in _LOADED:
        _LOADED[memo] = _load_uncached(cfg)
    return _LOADED[memo]


def _load_uncached(cfg: DataConfig) -> Corpus:
    source = _resolve_source(cfg.corpus)
    key = _cache_key(source, cfg.val_fraction)
    entry = cache_root() / "corpus" / key
    meta = _read_cached(entry)
    if meta is None:
        try:
            meta = _build(source, key, entry, cfg.val_fraction)
        except OSError as exc:
            raise UserError(f"cannot write the corpus cache at {entry}: {exc.strerror}; "
                            "set NORMFREE_BENCH_CACHE to a writable folder") from exc
    if meta["train"]["bytes"] + meta["val"]["bytes"] == 0:
        raise UserError(f"corpus {cfg.corpus} has 0 bytes of text; {_VALID_CORPUS}")
    meta["cache_dir"] = str(entry)
    meta["source"]["description"] = source.describe()  # as this version words it (an older cache entry may not)
    return Corpus(train=open_split(entry / "train.bin"), val=open_split(entry / "val.bin"),
                  sha256=meta["sha256"], meta=meta)


# --------------------------------------------------------------------------- batching


def check_split_size(n_bytes: int, context_length: int, split: str) -> None:
    """Raise `UserError` unless a split holds at least one window of ``context_length + 1`` bytes."""
    if context_length < 1:
        raise UserError(f"model.context_length must be >= 1, got {context_length}")
    need = context_length + 1
    if n_bytes < need:
        raise UserError(
            f"corpus split '{split}' has {n_bytes} bytes, fewer than one context window "
            f"(context_length+1 = {need}); use a larger corpus or a smaller model.context_length")


def windows_at(tokens: np.ndarray, starts: np.ndarray, context_length: int) -> Batch:
    """``(x, y)`` int64 tensors of shape (len(starts), context_length); y is x shifted by one byte."""
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(context_length + 1, dtype=np.int64)
    block = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    return block[:, :-1].contiguous(), block[:, 1:].contiguous()


class TrainWindows(IterableDataset):
    """An endless stream of random ``(x, y)`` batches; use with ``DataLoader(..., batch_size=None)``.

    Window starts come from a ``torch.Generator`` seeded with `seed`, so every fresh iterator (and
    every process) with the same seed yields the same batches. In a multi-worker DataLoader, worker
    ``i`` uses ``seed + 1_000_003 * i`` (worker 0 matches the single-process stream).
    """

    def __init__(self, tokens: np.ndarray, context_length: int, batch_size: int, seed: int = 0,
                 split: str = "train") -> None:
        super().__init__()
        check_split_size(len(tokens), context_length, split)
        if batch_size < 1:
            raise UserError(f"data.batch_size must be >= 1, got {batch_size}")
        self.tokens = tokens
        self.context_length = context_length
        self.batch_size = batch_size
        self.seed = seed

    def _worker_seed(self) -> int:
        info = torch.utils.data.get_worker_info()
        return self.seed + (1_000_003 * info.id if info is not None else 0)

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self._worker_seed())
        n_starts = len(self.tokens) - self.context_length  # last start leaves room for y's final byte
        while True:
            starts = torch.randint(0, n_starts, (self.batch_size,), generator=gen).numpy()
            yield windows_at(self.tokens, starts, self.context_length)


def val_batches(corpus: Corpus, context_length: int, cfg: DataConfig) -> list[Batch]:
    """``cfg.val_windows`` fixed validation windows (starts from ``default_rng(cfg.val_seed)``),
    grouped into batches of ``cfg.batch_size`` (the last batch may be smaller)."""
    check_split_size(len(corpus.val), context_length, "val")
    rng = np.random.default_rng(cfg.val_seed)
    starts = rng.integers(0, len(corpus.val) - context_length, size=cfg.val_windows)
    return [windows_at(corpus.val, starts[i:i + cfg.batch_size], context_length)
            for i in range(0, cfg.val_windows, cfg.batch_size)]
