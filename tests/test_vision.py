"""The ViT task: scikit-learn's digits offline, local image folders, CIFAR-10's missing-data message,
real training with torchmetrics accuracy, and the vision-smoke suite end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from normfree_bench import build_model
from normfree_bench.cli import main
from normfree_bench.config import DataConfig, GuardConfig, ModelConfig, RunConfig, TrainConfig, load_run_config
from normfree_bench.config.suites import suite_path
from normfree_bench.core.layers import PointwiseNorm
from normfree_bench.data.images import TrainImages, load_images, val_image_batches
from normfree_bench.errors import UserError
from normfree_bench.models.convert import TimmView
from normfree_bench.training.train import train_one

DIGITS_MODEL = ModelConfig(task="vit", d_model=32, n_layers=2, n_heads=4, image_size=8, patch_size=2, in_chans=1,
                           num_classes=10)


def test_digits_split_is_fixed_stratified_and_standardised():
    data = load_images(DataConfig(dataset="digits"), DIGITS_MODEL)
    (x_tr, _), (x_va, y_va) = data.train, data.val
    assert x_tr.shape == (1437, 1, 8, 8) and x_va.shape == (360, 1, 8, 8)
    assert data.num_classes == 10
    assert np.bincount(y_va.numpy()).min() >= 35  # stratified: every digit ~36 times in validation
    assert abs(float(x_tr.mean())) < 1e-4 and abs(float(x_tr.std()) - 1) < 1e-2
    again = load_images(DataConfig(dataset="digits"), DIGITS_MODEL)
    assert again.fingerprint == data.fingerprint


def test_train_batches_are_seeded_and_validation_is_the_whole_split():
    data = load_images(DataConfig(dataset="digits"), DIGITS_MODEL)
    a, b = next(iter(TrainImages(data.train, 16, seed=3))), next(iter(TrainImages(data.train, 16, seed=3)))
    assert a[0].shape == (16, 1, 8, 8) and bool((a[1] == b[1]).all())
    assert sum(len(y) for _, y in val_image_batches(data.val, 64)) == 360


def test_model_shape_mismatch_is_bad_input():
    with pytest.raises(UserError, match="set model.num_classes: 10"):
        load_images(DataConfig(dataset="digits"), ModelConfig(task="vit", num_classes=3))
    with pytest.raises(UserError, match="model.image_size: 8"):
        load_images(DataConfig(dataset="digits"), ModelConfig(task="vit", image_size=16, patch_size=4))
    with pytest.raises(UserError, match="valid: digits, cifar10, imagefolder"):
        load_images(DataConfig(dataset="mnist"), DIGITS_MODEL)


def test_cifar10_missing_says_what_to_put_where(tmp_path):
    with pytest.raises(UserError, match=r"put the extracted cifar-10-batches-py/ folder there"):
        load_images(DataConfig(dataset="cifar10", root=str(tmp_path)),
                    ModelConfig(task="vit", image_size=32, patch_size=4, in_chans=3, num_classes=10))


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (8, 8), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(tmp_path / split / label / f"{i}.png")
    model = ModelConfig(task="vit", image_size=8, patch_size=2, in_chans=1, num_classes=2, d_model=16, n_heads=2)
    data = load_images(DataConfig(dataset="imagefolder", root=str(tmp_path)), model)
    assert data.train[0].shape == (12, 1, 8, 8) and data.val[0].shape == (4, 1, 8, 8)
    with pytest.raises(UserError, match="must hold train/<class>/ and val/<class>/"):
        load_images(DataConfig(dataset="imagefolder", root=str(tmp_path / "train")), model)


@pytest.mark.parametrize("baseline, init", [("layernorm", "paper"), ("layernorm", "shared"), ("nf", "shared")])
def test_vit_trains_on_digits_with_accuracy(baseline, init):
    model = ModelConfig(**{**DIGITS_MODEL.__dict__, "init": init})
    cfg = RunConfig(baseline=baseline, model=model, data=DataConfig(dataset="digits", batch_size=64),
                    train=TrainConfig(steps=60, lr=1e-2, warmup_steps=6, eval_interval=30, threads=2),
                    guard=GuardConfig(patience=20))
    result = train_one(cfg)
    assert result.l0 == pytest.approx(math.log(10))
    assert not result.diverged and result.final_val_loss < math.log(10) - 0.3
    assert 0.3 < result.final_val_accuracy <= 1.0 and math.isnan(result.final_val_perplexity)
    assert result.tokens == 60 * 64 * 16  # 16 patches per 8x8 image


def test_vision_smoke_suite_end_to_end(tmp_path, capsys):
    out = tmp_path / "vs"
    assert main(["run", "--suite", "vision-smoke", "--out", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "leaderboard.json").read_text())
    assert len(rows) == len({r["baseline"] for r in rows}) >= 7
    assert all(0.0 <= r["best_val_accuracy"] <= 1.0 for r in rows)
    assert all(r["best_val_loss"] <= math.log(10) + 1e-9 for r in rows)  # capped at l0 = ln 10
    assert "best_val_accuracy" in capsys.readouterr().out
    assert "final_val_accuracy" in (out / "trials.csv").read_text().splitlines()[0]


def test_a_timm_backbone_trains_in_the_harness_and_keeps_timms_architecture(tmp_path) -> None:
    """model.backbone: timm:<name> builds timm's own VisionTransformer at the config's size, converted to the
    baseline: the norm sites are DyT's, the class token is timm's, and a short run learns."""
    cfg = load_run_config(suite_path("vision-smoke"), {"model": {"backbone": "timm:vit_tiny_patch16_224"},
                                                       "train": {"steps": 30}, "baseline": "dyt"})
    model = build_model("dyt", cfg.model)
    assert isinstance(model, TimmView) and model.model.cls_token is not None
    assert len(model.model.blocks) == cfg.model.n_layers and model.model.embed_dim == cfg.model.d_model
    assert all(isinstance(m, PointwiseNorm) for _, _, _, m in model.norm_sites())
    result = train_one(cfg)
    assert not result.diverged and result.final_val_loss < cfg.model.initial_loss
    assert any(row[3] == "param.alpha" for row in result.diagnostics)  # the probe reaches timm's sites


def test_a_timm_backbone_that_does_not_exist_is_bad_input() -> None:
    with pytest.raises(UserError, match="unknown timm model 'vit_tiny_patch16_22'.*did you mean vit_tiny_patch16_224"):
        build_model("dyt", ModelConfig(task="vit", backbone="timm:vit_tiny_patch16_22"))
    with pytest.raises(UserError, match="task: vit only"):
        ModelConfig(backbone="timm:vit_tiny_patch16_224")


def test_the_patch_init_example_plugin_isolates_the_patch_convolution() -> None:
    code = ("import torch\nfrom normfree_bench import ModelConfig, build_model, load_plugin\n"
            "load_plugin('examples/patch_init.py')\n"
            "cfg = ModelConfig(task='vit', d_model=32, n_layers=2, n_heads=4)\n"
            "stds = []\n"
            "for name in ('dyt', 'dyt_patch002'):\n"
            "    torch.manual_seed(0)\n"
            "    stds.append(build_model(name, cfg).patch_embed.proj.weight.std().item())\n"
            "print(*stds)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    timm_default, gpt2 = map(float, proc.stdout.split())
    assert timm_default == pytest.approx(0.5 / 3**0.5, rel=0.15)  # U(+-1/sqrt(4)) for 2x2 grey patches
    assert gpt2 == pytest.approx(0.02, rel=0.15)
