"""Tests for normfree_bench.data: real stdlib corpus, caching, splits, batching and user errors.

Usage: ``.venv/bin/python -m pytest tests/test_data.py -q``
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from normfree_bench.config import DataConfig
from normfree_bench.data import text as data
from normfree_bench.data.text import Corpus, TrainWindows, load_corpus, stdlib_files, val_batches
from normfree_bench.errors import UserError

CTX = 32


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "cache"
    monkeypatch.setenv("NORMFREE_BENCH_CACHE", str(root))
    data.clear_loaded()
    yield root
    data.clear_loaded()


@pytest.fixture(scope="module")
def stdlib_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stdlib build shared by the module's stdlib tests (keeps the suite fast)."""
    return tmp_path_factory.mktemp("stdlib-cache")


@pytest.fixture
def stdlib(stdlib_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Corpus:
    monkeypatch.setenv("NORMFREE_BENCH_CACHE", str(stdlib_cache))
    return load_corpus(DataConfig())


def _text(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta\n"]
    return " ".join(rng.choice(words, size=n))


def test_stdlib_files_exclude_tests_and_packages() -> None:
    files = stdlib_files()
    assert len(files) > 100
    assert all(p.suffix == ".py" for p in files)
    for p in files:
        assert not data.EXCLUDED_DIRS.intersection(p.parts), p
        assert not p.name.startswith("test_"), p
    root = Path(data.sysconfig.get_paths()["stdlib"])
    rels = [p.relative_to(root).as_posix() for p in files]
    assert rels == sorted(rels)


def test_stdlib_corpus_loads_and_is_cached(stdlib: Corpus, stdlib_cache: Path) -> None:
    assert stdlib.train.dtype == np.uint8 and isinstance(stdlib.train, np.memmap)
    assert len(stdlib.train) > 1_000_000
    assert len(stdlib.val) > 0
    meta = stdlib.meta
    assert meta["split_by"] == "file" and meta["source"]["kind"] == "stdlib"
    for name in meta["train"]["files"] + meta["val"]["files"]:
        assert not data.EXCLUDED_DIRS.intersection(name.split("/")), name
        assert not name.rsplit("/", 1)[-1].startswith("test_"), name
    entry = Path(meta["cache_dir"])
    assert entry.parent.parent == stdlib_cache and (entry / "meta.json").is_file()
    on_disk = json.loads((entry / "meta.json").read_text())
    assert on_disk["sha256"] == stdlib.sha256
    assert on_disk["train"]["bytes"] == len(stdlib.train)

    data.clear_loaded()  # second load in a "new process": must come from the disk cache
    mtime = (entry / "train.bin").stat().st_mtime_ns
    again = load_corpus(DataConfig())
    assert again is not stdlib and again.sha256 == stdlib.sha256
    assert (entry / "train.bin").stat().st_mtime_ns == mtime
    assert np.array_equal(again.train, stdlib.train) and np.array_equal(again.val, stdlib.val)
    assert load_corpus(DataConfig()) is again  # in-process memo


def test_stdlib_split_is_by_file(stdlib: Corpus) -> None:
    train, val = stdlib.meta["train"]["files"], stdlib.meta["val"]["files"]
    assert train and val and not set(train) & set(val)
    assert len(train) + len(val) == len(stdlib_files())
    assert all(data.is_validation_file(f, 0.1) for f in val)
    assert not any(data.is_validation_file(f, 0.1) for f in train)
    assert 0.03 < len(val) / (len(train) + len(val)) < 0.2
    assert stdlib.meta["val"]["file_count"] == len(val)


def test_train_batches(stdlib: Corpus) -> None:
    ds = TrainWindows(stdlib.train, context_length=CTX, batch_size=4, seed=7)
    loader = torch.utils.data.DataLoader(ds, batch_size=None)
    batches = list(islice(loader, 3))
    for x, y in batches:
        assert x.shape == y.shape == (4, CTX)
        assert x.dtype == y.dtype == torch.long
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert int(x.max()) < 256 and int(x.min()) >= 0
    again = list(islice(TrainWindows(stdlib.train, CTX, 4, seed=7), 3))
    other = next(iter(TrainWindows(stdlib.train, CTX, 4, seed=8)))
    for (x1, y1), (x2, y2) in zip(batches, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(batches[0][0], other[0])


def test_windows_match_the_bytes() -> None:
    tokens = np.arange(50, dtype=np.uint8)
    x, y = data.windows_at(tokens, np.array([0, 39]), 10)
    assert x[1].tolist() == list(range(39, 49)) and y[1].tolist() == list(range(40, 50))
    for x, y in islice(TrainWindows(tokens, 49, 3, seed=1), 20):
        assert x[:, 0].tolist() == [0, 0, 0] and y[:, -1].tolist() == [49, 49, 49]  # only start 0 fits


def test_val_batches(stdlib: Corpus) -> None:
    cfg = DataConfig(val_windows=10, batch_size=4)
    batches = val_batches(stdlib, CTX, cfg)
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    for x, y in batches:
        assert x.shape[1] == CTX and x.dtype == torch.long and torch.equal(x[:, 1:], y[:, :-1])
    again = val_batches(stdlib, CTX, cfg)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    other = val_batches(stdlib, CTX, DataConfig(val_windows=10, batch_size=4, val_seed=99))
    assert not torch.equal(batches[0][0], other[0][0])


def test_user_text_file(tmp_path: Path) -> None:
    path = tmp_path / "book.txt"
    path.write_text(_text(5000))
    raw = path.read_bytes()
    corpus = load_corpus(DataConfig(corpus=str(path), val_fraction=0.2))
    assert corpus.meta["split_by"] == "bytes"
    assert bytes(corpus.train) + bytes(corpus.val) == raw
    assert len(corpus.val) == round(len(raw) * 0.2)
    x, y = next(iter(TrainWindows(corpus.train, 16, 2, seed=0)))
    assert x.shape == (2, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert len(val_batches(corpus, 16, DataConfig(corpus=str(path)))) == 4


def test_user_folder_split_by_file(tmp_path: Path) -> None:
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    names = [f"sub/doc{i:02d}.txt" if i % 2 else f"doc{i:02d}.md" for i in range(40)]
    for i, name in enumerate(names):
        (root / name).write_text(_text(200, seed=i))
    (root / ".hidden.txt").write_text("secret")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (root / "image.bin").write_bytes(bytes([0xFF, 0xFE, 0x00, 0x80]) * 100)
    (root / "empty.txt").write_text("")
    corpus = load_corpus(DataConfig(corpus=str(root), val_fraction=0.25))
    meta = corpus.meta
    assert meta["split_by"] == "file"
    train, val = meta["train"]["files"], meta["val"]["files"]
    assert sorted(train + val) == sorted(names) and not set(train) & set(val)
    assert train == sorted(train) and val
    expected = data.FILE_SEPARATOR.join((root / n).read_bytes() for n in val)
    assert bytes(corpus.val) == expected
    assert data.cache_root() / "corpus" == Path(meta["cache_dir"]).parent


def test_user_folder_falls_back_to_byte_split(tmp_path: Path) -> None:
    root = tmp_path / "one"
    root.mkdir()
    (root / "only.txt").write_text(_text(2000))
    corpus = load_corpus(DataConfig(corpus=str(root)))
    assert corpus.meta["split_by"] == "bytes"
    assert bytes(corpus.train) + bytes(corpus.val) == (root / "only.txt").read_bytes()
    assert len(corpus.train) > 0 and len(corpus.val) > 0


def test_cache_key_changes_when_a_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text(_text(500))
    first = load_corpus(DataConfig(corpus=str(path)))
    path.write_text(_text(600, seed=3))
    data.clear_loaded()
    second = load_corpus(DataConfig(corpus=str(path)))
    assert first.sha256 != second.sha256
    assert first.meta["cache_dir"] != second.meta["cache_dir"]


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"corpus path not found: .*nope; valid: 'stdlib' or a path"):
        load_corpus(DataConfig(corpus=str(tmp_path / "nope")))


def test_empty_folder_and_empty_file_raise(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no text files"):
        load_corpus(DataConfig(corpus=str(tmp_path / "empty")))
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(UserError, match=r"is empty \(0 bytes\)"):
        load_corpus(DataConfig(corpus=str(tmp_path / "blank.txt")))


def test_too_small_corpus_raises(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text("x" * 100)
    corpus = load_corpus(DataConfig(corpus=str(path)))  # 90 train bytes, 10 val bytes
    with pytest.raises(UserError) as info:
        val_batches(corpus, 32, DataConfig(corpus=str(path)))
    assert str(info.value) == (
        "corpus split 'val' has 10 bytes, fewer than one context window (context_length+1 = 33); "
        "use a larger corpus or a smaller model.context_length")
    with pytest.raises(UserError, match=r"corpus split 'train' has 90 bytes.*= 129\)"):
        TrainWindows(corpus.train, context_length=128, batch_size=2, seed=0)
    assert "\n" not in str(info.value)
