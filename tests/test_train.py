"""The divergence guard's rules, and real training runs on the default corpus."""

from __future__ import annotations

import math

import pytest
import torch

from normfree_bench.config import DataConfig, GuardConfig, ModelConfig, RunConfig, TrainConfig
from normfree_bench.models.factory import build_model
from normfree_bench.models.transformer import task_loss
from normfree_bench.training.guard import DivergenceGuard
from normfree_bench.training.lit_module import LitModel
from normfree_bench.training.train import train_one

L0 = math.log(256)


def test_guard_non_finite_loss_stops_at_once():
    guard = DivergenceGuard(l0=L0, margin=1.0, patience=5)
    assert not guard.update(1, 5.0)
    assert guard.update(2, math.nan)
    assert (guard.diverged, guard.diverged_step, guard.reason) == (True, 2, "non-finite loss")


def test_guard_non_finite_gradient_stops_at_once():
    guard = DivergenceGuard(l0=L0)
    assert guard.update(7, 3.0, math.inf)
    assert (guard.diverged_step, guard.reason) == (7, "non-finite gradient")


def test_guard_finite_divergence_needs_the_whole_patience_window():
    guard = DivergenceGuard(l0=L0, margin=1.0, patience=3)
    high = L0 + 2
    assert not guard.update(1, high)
    assert not guard.update(2, high)
    assert guard.update(3, high)
    assert guard.diverged_step == 3 and "for 3 steps" in guard.reason


def test_guard_recovered_spike_is_recorded_not_divergence():
    guard = DivergenceGuard(l0=L0, margin=1.0, patience=3)
    for step, loss in enumerate([5.0, 12.0, 531.0, 4.0, 3.0], start=1):
        assert not guard.update(step, loss)
    guard.finish(2.5, step=5)
    assert not guard.diverged and guard.spiked
    assert guard.spikes[0].start == 2 and guard.spikes[0].end == 4 and guard.spikes[0].peak == 531.0
    assert guard.max_loss == 531.0


def test_guard_a_finite_final_loss_at_chance_is_not_divergence_but_a_non_finite_one_is():
    guard = DivergenceGuard(l0=L0)
    guard.update(1, 5.0)
    guard.finish(L0, step=10)  # stuck at chance without blowing up: the leaderboard calls it stalled
    assert not guard.diverged
    guard.finish(math.nan, step=10)
    assert guard.diverged and guard.reason == "non-finite validation loss" and guard.diverged_step == 10


def test_guard_max_loss_includes_the_stopping_step():
    guard = DivergenceGuard(l0=L0, margin=1.0, patience=2)
    for step, loss in enumerate([4.0, 7.0, 9.0], start=1):
        guard.update(step, loss)
    assert guard.diverged and guard.max_loss == 9.0  # the step that stopped the run
    guard = DivergenceGuard(l0=L0)
    guard.update(1, 4.0)
    guard.update(2, math.inf)
    assert guard.diverged and guard.max_loss == math.inf


def small_run(baseline: str = "layernorm", lr: float = 3e-3, steps: int = 60, **train) -> RunConfig:
    return RunConfig(
        baseline=baseline,
        model=ModelConfig(d_model=32, n_layers=2, n_heads=4, context_length=64),
        data=DataConfig(batch_size=8, val_windows=16),
        train=TrainConfig(steps=steps, lr=lr, warmup_steps=10, eval_interval=30, log_interval=5, **train),
        guard=GuardConfig(margin=1.0, patience=20),
    )


@pytest.mark.parametrize("baseline", ["layernorm", "rmsnorm", "dyt", "fixup", "rezero", "skipinit", "nf"])
def test_short_real_training_lowers_the_loss(baseline):
    result = train_one(small_run(baseline, lr=1e-2, steps=60))
    assert not result.diverged, result.diverged_reason
    assert result.final_val_loss < L0 - 1.0  # well below the uniform-guess loss on real text
    assert result.curve[0]["train_loss"] > result.final_val_loss
    assert result.steps == 60 and result.tokens == 60 * 8 * 64
    assert result.tokens_per_s > 0 and result.params > 0
    assert result.final_val_perplexity == pytest.approx(math.exp(result.final_val_loss), rel=1e-3)


def test_training_is_deterministic_on_cpu():
    a = train_one(small_run(steps=20))
    b = train_one(small_run(steps=20))
    assert a.final_val_loss == b.final_val_loss
    assert [p["train_loss"] for p in a.curve] == [p["train_loss"] for p in b.curve]


def test_exploding_lr_is_recorded_as_diverged_with_its_step():
    result = train_one(small_run("layernorm", lr=10.0, steps=60))
    assert result.diverged and result.diverged_step is not None
    assert result.steps <= 60


def test_fixup_lr_scale_reaches_the_optimizer():
    from normfree_bench.models.factory import build_model
    from normfree_bench.training.lit_module import LitModel

    cfg = small_run("fixup")
    module = LitModel(build_model("fixup", cfg.model, scalar_lr_scale=0.1), cfg.train, DivergenceGuard(l0=L0))
    opt = module.configure_optimizers()
    sched = opt["lr_scheduler"]["scheduler"]
    sched.step_update(num_updates=cfg.train.warmup_steps)
    lrs = sorted({g["lr"] for g in opt["optimizer"].param_groups})
    assert lrs == pytest.approx([cfg.train.lr * 0.1, cfg.train.lr])


def final_log_z(result) -> float:
    return [row[4] for row in result.diagnostics if row[3] == "log_z"][-1]


def test_z_loss_pulls_log_z_towards_zero():
    """PaLM's z-loss: the same run with a strong z_loss ends with a far smaller log Z, and the guard,
    which follows the cross-entropy alone, does not mistake the large objective for divergence."""
    plain = train_one(small_run(steps=60))
    pulled = train_one(small_run(steps=60, z_loss=1.0))
    assert abs(final_log_z(pulled)) < 0.6 * abs(final_log_z(plain))
    assert not pulled.diverged and pulled.final_val_loss < L0 - 1.0  # and the model still learns
    assert max(p["train_loss"] for p in pulled.curve) < L0 + 0.5  # the curve is cross-entropy, not z-loss


def test_diagnostics_off_records_nothing_and_changes_nothing():
    on = train_one(small_run(steps=20))
    off = train_one(small_run(steps=20, diagnostics=False))
    assert on.diagnostics and not off.diagnostics
    assert on.final_val_loss == off.final_val_loss  # the probe only observes


def test_validation_loss_is_weighted_by_batch_size() -> None:
    """Batches of 3 and 1 windows: the loss is the mean over the 4 windows, not the mean of the 2 batch means
    (torchmetrics' MeanMetric drops its weights under nan_strategy='disable', so the module keeps sums)."""
    cfg = small_run()
    torch.manual_seed(0)
    model = build_model("layernorm", cfg.model)
    module = LitModel(model, cfg.train.__class__(**{**cfg.train.__dict__, "diagnostics": False}),
                      DivergenceGuard(l0=cfg.model.initial_loss))
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 17), generator=gen)
    batches = [(x[:3, :-1], x[:3, 1:]), (x[3:, :-1], x[3:, 1:])]
    with torch.no_grad():
        for i, batch in enumerate(batches):
            module.validation_step(batch, i)
        module.on_validation_epoch_end()
        want = float(task_loss(model(x[:, :-1]), x[:, 1:]))
        per_batch = [float(task_loss(model(bx), by)) for bx, by in batches]
    got = module.val_points[-1][1]
    assert got == pytest.approx(want, rel=1e-5)
    assert abs(got - sum(per_batch) / 2) > 1e-4  # the unweighted mean of batch means is another number
