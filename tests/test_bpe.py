"""A byte-level BPE trained locally on the training split, or a named tokenizer.json; cached token files.

Usage: ``.venv/bin/python -m pytest tests/test_bpe.py -q``
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from tokenizers import Tokenizer

from normfree_bench.config import DataConfig
from normfree_bench.data.task import load_lm_corpus
from normfree_bench.data.text import load_corpus
from tests.conftest import cli, private_cache, write_word_corpus

VAL_ONLY = "zyxqwvzyxqwv"  # a word that appears only in the validation split


def text_corpus(tmp_path: Path) -> Path:
    """A single text file: the last 10 % of its bytes (the validation split) alone repeat `VAL_ONLY`."""
    path = write_word_corpus(tmp_path / "words.txt", n_words=20_000)
    body = path.read_text()
    tail = " ".join([VAL_ONLY] * 800)
    path.write_text(body + " " + tail)
    assert len(tail) < 0.1 * len(path.read_bytes())
    return path


def test_bpe_is_trained_on_the_training_split_and_round_trips_the_validation_text(tmp_path) -> None:
    path = text_corpus(tmp_path)
    with private_cache(tmp_path):
        cfg = DataConfig(corpus=str(path), tokenizer="bpe:400")
        corpus = load_lm_corpus(cfg)
        text = load_corpus(cfg)
        tok = Tokenizer.from_file(corpus.meta["tokenizer"]["path"])
        # a 14-word corpus runs out of merges before 400: the vocabulary is what training reached
        assert 256 < corpus.vocab_size == tok.get_vocab_size() <= 400 and corpus.train.dtype == np.uint16
        assert int(np.max(corpus.train)) < corpus.vocab_size and int(np.max(corpus.val)) < corpus.vocab_size
        assert tok.decode(np.asarray(corpus.val).tolist()) == bytes(text.val).decode("utf-8")
        assert not any(VAL_ONLY[:6] in t for t in tok.get_vocab())  # validation text shaped no token
        assert len(corpus.train) < len(text.train) / 2  # subwords: fewer tokens than bytes
        meta = corpus.meta["tokenizer"]
        assert meta["byte_corpus_sha256"] == text.sha256 and len(meta["tokenizer_sha256"]) == 64
        entry = Path(meta["path"]).parent
        stamp = (entry / "meta.json").stat().st_mtime_ns
        again = load_lm_corpus(cfg)  # from the cache: nothing rebuilt
        assert again.sha256 == corpus.sha256 and (entry / "meta.json").stat().st_mtime_ns == stamp
        assert load_lm_corpus(DataConfig(corpus=str(path), tokenizer="bpe:300")).sha256 != corpus.sha256


def test_a_named_tokenizer_json_gives_the_same_ids(tmp_path) -> None:
    path = text_corpus(tmp_path)
    with private_cache(tmp_path):
        trained = load_lm_corpus(DataConfig(corpus=str(path), tokenizer="bpe:400"))
        named_path = tmp_path / "my-tokenizer.json"
        named_path.write_bytes(Path(trained.meta["tokenizer"]["path"]).read_bytes())
        named = load_lm_corpus(DataConfig(corpus=str(path), tokenizer=str(named_path)))
        assert np.array_equal(np.asarray(named.train), np.asarray(trained.train))
        assert named.meta["tokenizer"]["tokenizer"] == str(named_path)


def test_training_on_bpe_tokens_starts_at_ln_vocab(tmp_path, capsys) -> None:
    path = write_word_corpus(tmp_path / "words.txt", n_words=20_000)
    cfg = tmp_path / "bpe.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "context_length": 32, "vocab_size": 400},
        "data": {"corpus": str(path), "tokenizer": "bpe:400", "batch_size": 8, "val_windows": 16},
        "train": {"steps": 20, "warmup_steps": 2, "eval_interval": 10, "log_interval": 5, "threads": 1}}))
    with private_cache(tmp_path):
        rc, _, err = cli(["train", "--config", str(cfg), "--lr", "0.01", "--out", str(tmp_path / "out"),
                          "--no-progress"], capsys)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["l0"] == pytest.approx(math.log(400)) and metrics["final_val_loss"] < math.log(400)


@pytest.mark.parametrize("tokenizer, message", [
    ("bpe:100", "the BPE vocabulary must be an integer in [257, 65536]"),
    ("bpe:lots", "the BPE vocabulary must be an integer in [257, 65536]"),
    ("wordpiece", "unknown data.tokenizer 'wordpiece'; valid: bytes, bpe:<vocab size>"),
    ("{tmp}/missing.json", "cannot read it as a tokenizer.json"),
    ("{tmp}/bad.json", "cannot read it as a tokenizer.json"),
])
def test_bad_tokenizers_exit_2_in_one_line(tmp_path, capsys, tokenizer: str, message: str) -> None:
    (tmp_path / "bad.json").write_text("{not a tokenizer")
    path = write_word_corpus(tmp_path / "words.txt", n_words=2000)
    out = tmp_path / "out"
    with private_cache(tmp_path):
        rc, _, err = cli(["train", "--out", str(out), "--no-progress", "--set", f"data.corpus={path}",
                          "--set", f"data.tokenizer={tokenizer.format(tmp=tmp_path)}"], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_token_files_take_no_tokenizer(tmp_path, capsys) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    np.arange(5000, dtype=np.uint16).tofile(folder / "train.bin")
    np.arange(1000, dtype=np.uint16).tofile(folder / "val.bin")
    with private_cache(tmp_path):
        rc, _, err = cli(["train", "--out", str(tmp_path / "out"), "--no-progress", "--set", f"data.corpus={folder}",
                          "--set", "data.vocab_size=5000", "--set", "data.tokenizer=bpe:512"], capsys)
    assert rc == 2 and "holds token files, already tokenized" in err and len(err.strip().splitlines()) == 1


def test_a_sweep_records_its_tokenizer_in_provenance(tmp_path, capsys) -> None:
    path = write_word_corpus(tmp_path / "words.txt", n_words=20_000)
    out = tmp_path / "run"
    with private_cache(tmp_path):
        rc, _, err = cli(["run", "--suite", "smoke", "--baselines", "layernorm", "--out", str(out), "--no-progress",
                          "--set", "sweep.lrs=[0.01]", "--set", f"data.corpus={path}",
                          "--set", "data.tokenizer=bpe:300", "--set", "model.vocab_size=300"], capsys)
        corpus = load_lm_corpus(DataConfig(corpus=str(path), tokenizer="bpe:300"))
    assert rc == 0, err
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["tokenizer"] == {"tokenizer": "bpe:300", "vocab_size": corpus.vocab_size,
                                       "tokenizer_sha256": corpus.meta["tokenizer"]["tokenizer_sha256"]}
    assert provenance["corpus_sha256"] == corpus.sha256 and "tokenized with bpe:300" in provenance["corpus_source"]


def test_the_standard_library_trains_through_run_on_bpe_tokens(tmp_path, capsys) -> None:
    """The default-bpe path, cut down: the stdlib's training split gives the BPE, a sweep trains on its tokens."""
    out = tmp_path / "run"
    rc, _, err = cli(["run", "--suite", "smoke", "--baselines", "layernorm", "--out", str(out), "--no-progress",
                      "--set", "sweep.lrs=[0.01]", "--set", "train.steps=6", "--set", "train.warmup_steps=1",
                      "--set", "data.tokenizer=bpe:512", "--set", "model.vocab_size=512"], capsys)
    assert rc == 0, err
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["tokenizer"]["tokenizer"] == "bpe:512" and provenance["tokenizer"]["vocab_size"] == 512
    assert "standard library" in provenance["corpus_source"] and "tokenized with bpe:512" in provenance["corpus_source"]
    first = next(r for r in csv.DictReader((out / "curves.csv").open()) if r["train_loss"] not in ("", "nan"))
    assert abs(float(first["train_loss"]) - math.log(512)) < 0.3  # a uniform guess over the BPE vocabulary
