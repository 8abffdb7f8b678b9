"""Rescaling invariance: which parameters are rescaled, that the residual stream then scales exactly, and that
LayerNorm's output does not move while DyT's does.

Usage: ``.venv/bin/python -m pytest tests/test_invariance.py -q``
"""

from __future__ import annotations

import pytest
import torch

from normfree_bench import build_model
from normfree_bench.analysis.invariance import input_params, rescaled, rescaling_invariance, stream_params
from normfree_bench.config import ModelConfig

CONFIG = ModelConfig(d_model=32, n_layers=3, n_heads=4, context_length=16)


def lm(name: str, unit_stream: bool = False) -> torch.nn.Module:
    """A tiny LM; ``unit_stream``: embeddings of std 1, so the stream's variance is far above LayerNorm's eps
    (GPT-2's init std 0.02 gives a variance of 4e-4, only 40x eps = 1e-5: LayerNorm is then invariant only
    to about 1 %)."""
    torch.manual_seed(0)
    model = build_model(name, CONFIG).eval()
    if unit_stream:
        with torch.no_grad():
            model.tok_emb.weight.normal_()
            model.pos_emb.normal_()
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 16), generator=gen)
    return x, torch.randint(0, 256, (4, 16), generator=gen)


def test_the_stream_parameters_are_the_embeddings_and_the_output_projections() -> None:
    model = lm("layernorm")
    want = [model.tok_emb.weight, model.pos_emb]
    for block in model.blocks:
        want += [block.attn.proj.weight, block.attn.proj.bias, block.mlp.fc2.weight, block.mlp.fc2.bias]
    got = stream_params(model)
    assert len(got) == len(want) == 2 + 4 * CONFIG.n_layers
    assert {id(t) for t in got} == {id(t) for t in want}
    assert [id(t) for t in input_params(model)] == [id(model.tok_emb.weight)]


@pytest.mark.parametrize("name", ["layernorm", "dyt", "rezero"])
def test_rescaling_the_stream_parameters_scales_every_norm_sites_input_by_c_where_norms_are_invariant(name) -> None:
    model = lm(name, unit_stream=True)
    x, _ = batch()
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: seen.setdefault(n, []).append(args[0].detach()))
             for _, _, n, m in model.norm_sites()]
    with torch.no_grad():
        model(x)
        with rescaled(stream_params(model), 3.0):
            model(x)
    for h in hooks:
        h.remove()
    first = "blocks.0.norm_attn"
    torch.testing.assert_close(seen[first][1], 3.0 * seen[first][0])  # the embedding stream, for every scheme
    if name == "layernorm":  # norms at every site: the stream is 3x at every layer
        for n, (a, b) in seen.items():
            torch.testing.assert_close(b, 3.0 * a, rtol=1e-4, atol=1e-5, msg=n)


def test_layernorm_is_invariant_and_dyt_is_not_and_parameters_come_back_bit_for_bit() -> None:
    x, y = batch()
    for name in ("layernorm", "dyt"):
        model = lm(name, unit_stream=True)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = rescaling_invariance(model, x, y)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        weights = result["weights"]
        if name == "layernorm":
            assert max(weights[c]["rel_change"] for c in ("0.5", "2", "10")) < 1e-4
            assert abs(weights["10"]["loss_change"]) < 1e-4
        else:
            assert weights["10"]["rel_change"] > 0.05 and weights["0.1"]["rel_change"] > 0.05


def test_at_gpt2_init_layernorms_eps_breaks_the_invariance_by_about_a_percent() -> None:
    x, y = batch()
    ln = rescaling_invariance(lm("layernorm"), x, y)["weights"]
    dyt = rescaling_invariance(lm("dyt"), x, y)["weights"]
    assert 1e-3 < ln["10"]["rel_change"] < 0.05  # eps / (2 var) with var = 4e-4: about 1 %
    assert ln["10"]["rel_change"] < dyt["10"]["rel_change"] / 10


def test_the_vits_input_rescaling_is_a_pixel_rescaling() -> None:
    config = ModelConfig(task="vit", d_model=32, n_layers=2, n_heads=4, image_size=8, patch_size=4, in_chans=1,
                         num_classes=10)
    torch.manual_seed(0)
    model = build_model("dyt", config).eval()
    images = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        want = model(2.0 * images)
        with rescaled(input_params(model), 2.0):
            got = model(images)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---- model.input_scale: the data rescaling that analyze --invariance retrains with -------------------------------
def test_input_scale_rescales_the_lms_embedded_tokens_as_the_input_rescaling_does() -> None:
    import dataclasses

    x, _ = batch()
    for c in (0.1, 10.0):
        torch.manual_seed(0)
        scaled = build_model("dyt", dataclasses.replace(CONFIG, input_scale=c)).eval()
        model = lm("dyt")
        with torch.no_grad():
            want_stream = model.tok_emb(x) * c + model.pos_emb[:, :16]
            torch.testing.assert_close(scaled.embed(x), model.embed_scale(want_stream), rtol=0, atol=0)
            with rescaled(input_params(model), c):
                torch.testing.assert_close(scaled(x), model(x), rtol=1e-5, atol=1e-5)


def test_input_scale_multiplies_the_vits_pixels() -> None:
    import dataclasses

    config = ModelConfig(task="vit", d_model=32, n_layers=2, n_heads=4, image_size=8, patch_size=4, in_chans=1,
                         num_classes=10)
    images = torch.rand(3, 1, 8, 8)
    torch.manual_seed(0)
    model = build_model("layernorm", config).eval()
    torch.manual_seed(0)
    scaled = build_model("layernorm", dataclasses.replace(config, input_scale=0.5)).eval()
    with torch.no_grad():
        torch.testing.assert_close(scaled(images), model(0.5 * images), rtol=0, atol=0)


def test_a_retrained_rescaled_run_is_train_one_with_input_scale(tmp_path) -> None:
    import dataclasses

    from normfree_bench.analysis.analyze import rescaled_data_runs
    from normfree_bench.config import load_run_config, parse_set
    from normfree_bench.training.train import train_one

    cfg = load_run_config(overrides=parse_set([
        "baseline=layernorm", "model.d_model=32", "model.n_layers=1", "model.context_length=32", "data.batch_size=4",
        "data.val_windows=4", "train.steps=8", "train.warmup_steps=1", "train.eval_interval=4", "train.threads=1"]))
    runs = rescaled_data_runs(cfg, None, 1.5, (10.0,))
    direct = train_one(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, input_scale=10.0),
                                           train=dataclasses.replace(cfg.train, diagnostics=False)))
    assert runs["10"]["val_loss"] == direct.final_val_loss and runs["10"]["delta"] == direct.final_val_loss - 1.5
    assert direct.final_val_loss != train_one(cfg).final_val_loss


@pytest.mark.parametrize("argv, expected", [
    (["--invariance", "--scales", "0.1,0"], "invalid rescaling factor c = 0 in --scales; valid: positive finite"),
    (["--invariance", "--scales", "-2"], "invalid rescaling factor c = -2 in --scales"),
    (["--invariance", "--scales", "0.5,big"], "invalid rescaling factor 'big' in --scales"),
    (["--invariance", "--scales", "inf"], "invalid rescaling factor c = inf"),
    (["--invariance", "--scales", "2,2"], "--scales gives c = 2 twice"),
    (["--scales", "2"], "--scales applies to --invariance"),
])
def test_bad_scales_exit_2_with_one_line_before_any_work(smoke_dir, tmp_path, capsys, argv, expected) -> None:
    import shutil

    from tests.conftest import cli, snapshot

    run_dir = tmp_path / "smoke"
    shutil.copytree(smoke_dir, run_dir)
    before = snapshot(run_dir)
    code, _, err = cli(["analyze", str(run_dir), "--no-progress", *argv], capsys)
    assert code == 2 and expected in err and err.count("\n") == 1, err
    assert snapshot(run_dir) == before
