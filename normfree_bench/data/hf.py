"""Hugging Face datasets saved to disk, as a text corpus: ``data.corpus: hf:/path/saved_dataset``.

Usage: ``corpus = load_hf_corpus(DataConfig(corpus="hf:/data/tinystories", text_field="text"))``
(then bytes or ``data.tokenizer`` as for any text corpus; normfree_bench.data.task dispatches here)

The folder is what ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` wrote; it is read with
``datasets.load_from_disk`` (memory-mapped Arrow files, no hub access). Splits:

- a `DatasetDict` with a ``train`` split and one of ``validation``, ``val`` or ``test`` (the first present):
  those two, as the dataset's authors split it;
- a single `Dataset` (or a `DatasetDict` with ``train`` only): split by row, a row being validation when the
  SHA-256 of its index falls in the first ``val_fraction`` (the text corpus's file rule, with the row index
  as the name), so the split does not depend on anything but the row's position.

Each row's ``data.text_field`` (``text`` when left out; a string column; a missing or empty value counts as
empty text) is UTF-8 encoded and the rows are joined by the text corpus's separator, one newline, into ``train.bin`` and
``val.bin`` in the corpus cache, keyed by the folder's path, the dataset's own fingerprints, every file's
size and mtime, the field and ``val_fraction``. From there it is a text corpus like any other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from normfree_bench.config import DataConfig
from normfree_bench.data.text import (
    CACHE_FORMAT,
    FILE_SEPARATOR,
    Corpus,
    cache_root,
    fingerprint,
    is_validation_file,
    open_split,
    sha256_file,
    tmp_name,
)
from normfree_bench.errors import UserError
from normfree_bench.io import write_json

PREFIX = "hf:"
VAL_SPLITS = ("validation", "val", "test")
DEFAULT_FIELD = "text"  # data.text_field left out


def hf_path(corpus: str) -> Path | None:
    """The folder of an ``hf:`` corpus, else None."""
    return Path(corpus[len(PREFIX):]).expanduser() if corpus.startswith(PREFIX) else None


def _load(path: Path, corpus: str) -> Any:
    if importlib.util.find_spec("datasets") is None:
        raise UserError(f"data.corpus {corpus!r} needs the hf extra, which is not installed (datasets is missing); "
                        "install it with: pip install -e '.[hf]'")
    if not path.is_dir():
        raise UserError(f"data.corpus {corpus!r}: no folder at {path}; valid: hf:<a folder written by "
                        "Dataset.save_to_disk or DatasetDict.save_to_disk>")
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"data.corpus {corpus!r}: {path} is not a saved Hugging Face dataset ({detail}); valid: "
                        "a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk") from exc


def _splits(data: Any, corpus: str) -> tuple[Any, Any | None, str]:
    """(train, val or None when rows are to be split, how) of a Dataset or DatasetDict."""
    import datasets

    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise UserError(f"data.corpus {corpus!r} has splits {sorted(data)} and no 'train'; valid: a DatasetDict "
                            "with a train split, or a single Dataset")
        val_name = next((name for name in VAL_SPLITS if name in data), None)
        if val_name is None:
            return data["train"], None, "rows of train"
        return data["train"], data[val_name], f"train / {val_name}"
    return data, None, "rows"


def _check_field(ds: Any, field: str, corpus: str, split: str) -> None:
    if field not in ds.column_names:
        raise UserError(f"data.text_field {field!r} is not a column of {corpus!r} ({split}); valid: "
                        f"{', '.join(ds.column_names) or 'none: the dataset has no columns'}")
    if field not in _string_columns(ds):
        raise UserError(f"data.text_field {field!r} of {corpus!r} ({split}) holds {ds.features[field]}, not "
                        f"text; valid: a string column ({', '.join(_string_columns(ds)) or 'there is none'})")


def _string_columns(ds: Any) -> list[str]:
    return [c for c in ds.column_names if getattr(ds.features[c], "dtype", None) in ("string", "large_string")]


def _write_rows(path: Path, texts: Any) -> tuple[int, int]:
    """Atomically write the texts joined by the separator; returns (rows, rows holding text)."""
    tmp = tmp_name(path)
    count = with_text = 0
    with open(tmp, "wb") as out:
        for text in texts:
            if count:
                out.write(FILE_SEPARATOR)
            out.write((text or "").encode("utf-8"))
            count += 1
            with_text += bool(text)
    os.replace(tmp, path)
    return count, with_text


def _column(ds: Any, field: str, rows: list[int] | None = None) -> Any:
    picked = ds if rows is None else ds.select(rows)
    for batch in picked.iter(batch_size=1024):
        yield from batch[field]


def load_hf_corpus(cfg: DataConfig) -> Corpus:
    """The saved dataset's ``text_field`` as a byte corpus (cached); one-line errors for a missing extra, a
    folder that is not a saved dataset, a field that is not a text column, and an empty split."""
    path = hf_path(cfg.corpus)
    assert path is not None
    field = cfg.text_field or DEFAULT_FIELD
    train, val, how = _splits(_load(path, cfg.corpus), cfg.corpus)
    _check_field(train, field, cfg.corpus, "train")
    if val is not None:
        _check_field(val, field, cfg.corpus, "validation")
    parts = [train._fingerprint, val._fingerprint if val is not None else None]
    files = [[p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
             for p in sorted(path.rglob("*")) if p.is_file()]
    blob = {"format": CACHE_FORMAT, "kind": "hf", "path": str(path.resolve()), "fingerprints": parts, "files": files,
            "field": field, "val_fraction": cfg.val_fraction, "separator": FILE_SEPARATOR.decode()}
    key = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]
    entry = cache_root() / "corpus" / key
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        try:
            entry.mkdir(parents=True, exist_ok=True)
            if val is None:
                is_val = [is_validation_file(str(i), cfg.val_fraction) for i in range(len(train))]
                counts = (_write_rows(entry / "train.bin", _column(train, field,
                                                                   [i for i, v in enumerate(is_val) if not v])),
                          _write_rows(entry / "val.bin", _column(train, field,
                                                                 [i for i, v in enumerate(is_val) if v])))
            else:
                counts = (_write_rows(entry / "train.bin", _column(train, field)),
                          _write_rows(entry / "val.bin", _column(val, field)))
        except OSError as exc:
            raise UserError(f"cannot write the corpus cache at {entry}: {exc.strerror}; "
                            "set NORMFREE_BENCH_CACHE to a writable folder") from exc
        meta: dict[str, Any] = {
            "format": CACHE_FORMAT, "key": key, "split_by": how, "separator": FILE_SEPARATOR.decode(),
            "source": {"kind": "hf", "path": str(path.resolve()), "field": field,
                       "description": f"Hugging Face dataset {path.resolve()} (field {field!r})"},
            "val_fraction": cfg.val_fraction, "vocab_size": 256,
            **{split: {"bytes": (entry / f"{split}.bin").stat().st_size, "sha256": sha256_file(entry / f"{split}.bin"),
                       "rows": n, "rows_with_text": t} for split, (n, t) in zip(("train", "val"), counts)}}
        meta["sha256"] = fingerprint(meta["train"]["sha256"], meta["val"]["sha256"])
        write_json(meta_path, meta)
    meta = json.loads(meta_path.read_text())
    for split in ("train", "val"):
        if meta[split]["rows_with_text"] == 0:
            raise UserError(f"data.corpus {cfg.corpus!r}: the {split} split has no text in field "
                            f"{field!r} ({meta[split]['rows']} rows, split by {how}); valid: a dataset whose "
                            "train and validation rows hold text")
    meta["cache_dir"] = str(entry)
    return Corpus(train=open_split(entry / "train.bin"), val=open_split(entry / "val.bin"), sha256=meta["sha256"],
                  meta=meta)
