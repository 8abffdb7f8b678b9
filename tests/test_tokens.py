"""Token files in nanoGPT's format: memory-mapped, checked, trained on; their errors in one line.

Usage: ``.venv/bin/python -m pytest tests/test_tokens.py -q``
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from normfree_bench.config import DataConfig
from normfree_bench.data.tokens import load_token_files
from tests.conftest import cli, private_cache, without_later_keys

VOCAB = 1000


def write_tokens(folder: Path, train: np.ndarray | None = None, val: np.ndarray | None = None) -> Path:
    """A learnable token stream (a repeated random sequence), as nanoGPT's prepare.py writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    motif = rng.integers(0, VOCAB, size=97)
    stream = np.tile(motif, 300)
    (train if train is not None else stream[:25_000]).astype(np.uint16).tofile(folder / "train.bin")
    (val if val is not None else stream[25_000:]).astype(np.uint16).tofile(folder / "val.bin")
    return folder


def config(tmp_path: Path, corpus: Path, **data: object) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "context_length": 32, "vocab_size": VOCAB},
        "data": {"corpus": str(corpus), "vocab_size": VOCAB, "batch_size": 8, "val_windows": 16, **data},
        "train": {"steps": 30, "warmup_steps": 2, "eval_interval": 15, "log_interval": 5, "threads": 1,
                  "diagnostics": False}}))
    return path


def test_token_files_are_memory_mapped_and_fingerprinted(tmp_path) -> None:
    folder = write_tokens(tmp_path / "tok")
    with private_cache(tmp_path):
        corpus = load_token_files(folder, VOCAB)
        assert isinstance(corpus.train, np.memmap) and corpus.train.dtype == np.uint16
        assert len(corpus.train) == 25_000 and len(corpus.val) == 97 * 300 - 25_000
        assert corpus.vocab_size == VOCAB
        assert list(Path(tmp_path / "cache" / "tokens").glob("*.json"))  # the hashes are cached
        first = corpus.sha256
        stream = np.fromfile(folder / "val.bin", dtype=np.uint16)
        stream[5] = (stream[5] + 1) % VOCAB
        stream.tofile(folder / "val.bin")
        assert load_token_files(folder, VOCAB).sha256 != first  # a changed token changes the fingerprint


def test_training_on_token_files_learns_from_ln_vocab(tmp_path, capsys) -> None:
    folder = write_tokens(tmp_path / "tok")
    with private_cache(tmp_path):
        rc, _, err = cli(["train", "--config", str(config(tmp_path, folder)), "--baseline", "layernorm",
                          "--lr", "0.01", "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["l0"] == pytest.approx(math.log(VOCAB))
    assert metrics["final_val_loss"] < math.log(VOCAB) - 0.5  # the repeated motif is learnable


@pytest.mark.parametrize("case, message", [
    ("odd", "train.bin has 50001 bytes, not a whole number of uint16 tokens"),
    ("too_big", "val.bin holds token id 1000 at position 7, not below data.vocab_size = 1000"),
    ("uint32", "train.bin looks like 32-bit ids"),
    ("empty", "val.bin is empty"),
    ("no_vocab", "holds token files (train.bin, val.bin); set data.vocab_size"),
    ("vocab_for_text", "data.vocab_size applies to token files"),
    ("model_too_small", "model.vocab_size is 256, but the corpus has 1000 token ids (data.vocab_size)"),
    ("vocab_range", "data.vocab_size must be in [2, 65536]"),
])
def test_bad_token_files_exit_2_naming_the_file_and_value(tmp_path, capsys, case: str, message: str) -> None:
    folder = write_tokens(tmp_path / "tok")
    data: dict[str, object] = {}
    model_vocab = VOCAB
    if case == "odd":
        with open(folder / "train.bin", "ab") as fh:
            fh.write(b"\x01")
    elif case == "too_big":
        val = np.fromfile(folder / "val.bin", dtype=np.uint16)
        val[7] = VOCAB
        val.tofile(folder / "val.bin")
    elif case == "uint32":
        np.fromfile(folder / "train.bin", dtype=np.uint16).astype(np.uint32).tofile(folder / "train.bin")
    elif case == "empty":
        (folder / "val.bin").write_bytes(b"")
    elif case == "no_vocab":
        data["vocab_size"] = None
    elif case == "vocab_for_text":
        (tmp_path / "text.txt").write_text("some text " * 500)
        folder = tmp_path / "text.txt"
    elif case == "model_too_small":
        model_vocab = 256
    elif case == "vocab_range":
        data["vocab_size"] = 70000
    path = config(tmp_path, folder, **data)
    cfg = yaml.safe_load(path.read_text())
    cfg["model"]["vocab_size"] = model_vocab
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    with private_cache(tmp_path):
        rc, _, err = cli(["train", "--config", str(path), "--out", str(out), "--no-progress"], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_vocab_size_left_out_keeps_old_config_hashes() -> None:
    from normfree_bench.config import RunConfig, config_hash

    cfg = RunConfig()
    assert cfg.config_hash() == config_hash(without_later_keys(cfg.to_dict()))
    assert DataConfig(vocab_size=50257).vocab_size == 50257
