"""Pre-tokenised corpora in nanoGPT's format: a folder with ``train.bin`` and ``val.bin``, flat uint16 token ids.

Usage: ``corpus = load_token_files(Path("data/openwebtext"), vocab_size=50257)``  (``data.corpus: <folder>`` with
``data.vocab_size``; normfree_bench.data.text.load_corpus dispatches here when the folder holds both files)

nanoGPT's ``prepare.py`` writes each split as ``np.memmap(..., dtype=np.uint16)`` of the token ids, nothing
else: no header, no dtype marker. The files are memory-mapped read-only and never loaded whole. Checked
before any training, each failure a one-line `UserError` naming the file and the offending value:

- a size that is not a whole number of uint16 tokens (an odd byte count);
- a file that looks like wider ids (uint32 or int32 little-endian ids below 65536 read as uint16 put a 0 at
  every odd position): when every odd-position uint16 of the first `SNIFF_TOKENS` is 0 while some even
  one is not;
- a token id >= ``data.vocab_size`` (the first such id and its position), scanned in chunks;
- an empty split.

The fingerprint (workers compare it) is the sha256 of both files' bytes, computed in chunks and cached
under the corpus cache keyed by each file's path, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from normfree_bench.data.text import Corpus, cache_root, fingerprint, sha256_file
from normfree_bench.errors import UserError
from normfree_bench.io import write_json

SPLITS = ("train", "val")
SNIFF_TOKENS = 1 << 16
CHUNK_TOKENS = 1 << 22


def holds_token_files(folder: Path) -> bool:
    return all((folder / f"{split}.bin").is_file() for split in SPLITS)


def _check_shape(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"token file {path} is empty; valid: flat uint16 token ids (nanoGPT's format)")
    if size % 2:
        raise UserError(f"token file {path} has {size} bytes, not a whole number of uint16 tokens; valid: "
                             "flat uint16 token ids (nanoGPT's format)")


def _check_dtype(path: Path, tokens: np.ndarray) -> None:
    head = np.asarray(tokens[:SNIFF_TOKENS])
    if len(head) >= 4 and not head[1::2].any() and head[0::2].any():
        raise UserError(f"token file {path} looks like 32-bit ids (every second uint16 of its first "
                             f"{len(head)} is 0); valid: flat uint16 token ids (nanoGPT's format)")


def _check_ids(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    for start in range(0, len(tokens), CHUNK_TOKENS):
        chunk = np.asarray(tokens[start:start + CHUNK_TOKENS])
        bad = np.flatnonzero(chunk >= vocab_size)
        if len(bad):
            at = start + int(bad[0])
            raise UserError(f"token file {path} holds token id {int(tokens[at])} at position {at}, not below "
                                 f"data.vocab_size = {vocab_size}; valid: ids in [0, {vocab_size})")


def _sha256(path: Path) -> str:
    """The file's sha256, cached by (path, size, mtime) so a large corpus is hashed once."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = cache_root() / "tokens" / f"{key}.json"
    try:
        return json.loads(memo.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    try:
        write_json(memo, {"path": str(path.resolve()), "sha256": digest})
    except OSError:
        pass  # an unwritable cache only costs a re-hash next time
    return digest


def load_token_files(folder: Path, vocab_size: int) -> Corpus:
    """The two splits of ``folder`` as read-only uint16 memory maps, checked (a one-line `UserError`)."""
    splits = {}
    for split in SPLITS:
        path = folder / f"{split}.bin"
        _check_shape(path)
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        _check_dtype(path, tokens)
        _check_ids(path, tokens, vocab_size)
        splits[split] = tokens
    shas = {split: _sha256(folder / f"{split}.bin") for split in SPLITS}
    meta = {"source": {"kind": "tokens", "root": str(folder.resolve()),
                       "description": f"token files {folder.resolve()} (vocabulary {vocab_size})"},
            "vocab_size": vocab_size,
            **{split: {"tokens": len(splits[split]), "sha256": shas[split]} for split in SPLITS}}
    return Corpus(train=splits["train"], val=splits["val"], sha256=fingerprint(shas["train"], shas["val"]),
                  meta=meta, vocab=vocab_size)
