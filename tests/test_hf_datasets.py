"""Hugging Face datasets saved to disk as the LM corpus (``data.corpus: hf:<folder>``): datasets the tests build
and save themselves, read back byte for byte, trained through ``run``, and every bad input refused in one line.

Usage: ``pytest tests/test_hf_datasets.py -q``
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from normfree_bench.config import DataConfig
from normfree_bench.data.hf import load_hf_corpus
from normfree_bench.errors import UserError
from tests.conftest import cli, private_cache, snapshot

datasets = pytest.importorskip("datasets")

WORDS = "the quick brown fox jumps over a lazy dog while alpha beta gamma delta".split()


def texts(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hf")
    with private_cache(root):
        single = datasets.Dataset.from_dict({"text": texts(400, 0), "label": list(range(400)),
                                             "title": [f"t{i}" for i in range(400)]})
        single.save_to_disk(str(root / "single"))
        pair = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": texts(300, 1)}),
                                     "validation": datasets.Dataset.from_dict({"body": texts(40, 2)})})
        pair.save_to_disk(str(root / "pair"))
        datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(root / "no_train"))
        datasets.Dataset.from_dict({"text": [""] * 50}).save_to_disk(str(root / "empty_text"))
        (root / "plain").mkdir()
        (root / "plain" / "notes.txt").write_text("not a dataset\n")
        yield {"root": root, "single": single, "pair": pair}


def test_a_dataset_dict_keeps_its_own_split_and_its_rows_bytes(saved) -> None:
    corpus = load_hf_corpus(DataConfig(corpus=f"hf:{saved['root'] / 'pair'}", text_field="body"))
    assert bytes(corpus.train) == "\n".join(saved["pair"]["train"]["body"]).encode()
    assert bytes(corpus.val) == "\n".join(saved["pair"]["validation"]["body"]).encode()
    assert corpus.vocab_size == 256
    assert corpus.meta["split_by"] == "train / validation"
    assert corpus.sha256 == hashlib.sha256((hashlib.sha256(bytes(corpus.train)).hexdigest()
                                            + hashlib.sha256(bytes(corpus.val)).hexdigest()).encode()).hexdigest()


def test_a_single_dataset_is_split_by_the_hash_of_each_rows_index(saved) -> None:
    corpus = load_hf_corpus(DataConfig(corpus=f"hf:{saved['root'] / 'single'}", val_fraction=0.2))
    rows = saved["single"]["text"]
    held = [int(hashlib.sha256(str(i).encode()).hexdigest(), 16) % 1000 < 200 for i in range(len(rows))]
    assert 0 < sum(held) < len(rows)
    assert bytes(corpus.val) == "\n".join(r for r, v in zip(rows, held) if v).encode()
    assert bytes(corpus.train) == "\n".join(r for r, v in zip(rows, held) if not v).encode()


def test_new_rows_saved_over_a_dataset_are_a_new_corpus(saved, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": texts(200, 5)}).save_to_disk(str(folder))
    first = load_hf_corpus(DataConfig(corpus=f"hf:{folder}"))
    shutil.rmtree(folder)
    datasets.Dataset.from_dict({"text": texts(200, 6)}).save_to_disk(str(folder))
    second = load_hf_corpus(DataConfig(corpus=f"hf:{folder}"))
    assert first.sha256 != second.sha256
    assert bytes(second.train).decode().split("\n")[0] in texts(200, 6)


def test_run_trains_on_a_saved_dataset_with_bpe(saved, capsys) -> None:
    root = saved["root"]
    cfg = {"model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 16, "vocab_size": 320},
           "data": {"corpus": f"hf:{root / 'pair'}", "text_field": "body", "tokenizer": "bpe:300", "batch_size": 4,
                    "val_windows": 4},
           "train": {"steps": 8, "warmup_steps": 1, "eval_interval": 4, "log_interval": 2, "threads": 1},
           "sweep": {"lrs": [0.01], "seeds": 1, "eval_seeds": 0, "baselines": ["layernorm"]}}
    path = root / "bpe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc, _, err = cli(["run", "--config", str(path), "--out", str(root / "run-bpe"), "--no-progress"], capsys)
    assert rc == 0, err
    trials = (root / "run-bpe" / "trials.csv").read_text().splitlines()
    assert len(trials) == 2 and ",COMPLETE," in trials[1]
    provenance = json.loads((root / "run-bpe" / "provenance.json").read_text())
    assert "Hugging Face dataset" in provenance["corpus_source"] and "'body'" in provenance["corpus_source"]
    assert provenance["tokenizer"]["tokenizer"] == "bpe:300"
    metrics = json.loads((root / "run-bpe" / "leaderboard.json").read_text())
    assert metrics[0]["baseline"] == "layernorm"
    curves = (root / "run-bpe" / "curves.csv").read_text().splitlines()
    first_loss = float(curves[1].split(",")[curves[0].split(",").index("train_loss")])
    assert abs(first_loss - math.log(320)) < 0.5  # starts near a uniform guess over the model's vocabulary


@pytest.mark.parametrize("data, needles", [
    ({"corpus": "hf:{R}/single", "text_field": "body"},
     ["data.text_field 'body' is not a column", "text, label, title"]),
    ({"corpus": "hf:{R}/single", "text_field": "label"}, ["data.text_field 'label'", "not text", "text, title"]),
    ({"corpus": "hf:{R}/plain"}, ["is not a saved Hugging Face dataset"]),
    ({"corpus": "hf:{R}/nowhere"}, ["no folder at", "nowhere"]),
    ({"corpus": "hf:{R}/no_train"}, ["no 'train'", "['test']"]),
    ({"corpus": "hf:{R}/empty_text"}, ["split has no text in field 'text'"]),
    ({"corpus": "stdlib", "text_field": "text"}, ["data.text_field applies to Hugging Face datasets"]),
])
def test_bad_dataset_input_is_one_line_and_changes_nothing(saved, data: dict, needles: list[str], capsys) -> None:
    root = saved["root"]
    data = {k: v.replace("{R}", str(root)) for k, v in data.items()}
    cfg = {"model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 16},
           "data": {**data, "batch_size": 4, "val_windows": 4}, "train": {"steps": 4, "warmup_steps": 1},
           "sweep": {"lrs": [0.01], "seeds": 1, "eval_seeds": 0, "baselines": ["layernorm"]}}
    path = root / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before = snapshot(root / "single")
    rc, out, err = cli(["run", "--config", str(path), "--out", str(root / "bad-run"), "--no-progress"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err + out, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (root / "bad-run").exists()
    assert snapshot(root / "single") == before


def test_without_the_extra_an_hf_corpus_is_one_line_naming_it(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # how Python marks a module as not importable
    with pytest.raises(UserError, match=r"needs the hf extra.*pip install -e '\.\[hf\]'"):
        load_hf_corpus(DataConfig(corpus=f"hf:{saved['root'] / 'single'}"))
