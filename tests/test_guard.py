"""The divergence guard on hand-built loss sequences, then the spikes of a real tiny sweep end to end.

Every expectation below is derived by hand from the rules in normfree_bench/training/guard.py:
a step is *high* when its loss is strictly above ``l0 + margin``; a high stretch that reaches ``patience``
consecutive steps stops the run at its ``patience``-th step; a high stretch that comes back down is a spike
``(start = first high step, end = first step back at or below the threshold, peak = its highest loss)``.

Run: ``.venv/bin/python -m pytest -q tests/test_guard.py`` (``-m "not slow"`` skips the sweep).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

from normfree_bench.training.faults import FaultInjector
from normfree_bench.training.guard import DivergenceGuard, Spike
from tests.conftest import private_cache, write_word_corpus

L0 = 4.0
MARGIN = 1.0  # threshold l0 + margin = 5.0


def feed(guard: DivergenceGuard, losses: Sequence[float], first_step: int = 1) -> list[bool]:
    """Feed ``losses`` as consecutive steps (finite gradient norm); return what each update returned."""
    return [guard.update(first_step + i, loss, 1.0) for i, loss in enumerate(losses)]


# --------------------------------------------------------------------------
# Hand-built sequences
# --------------------------------------------------------------------------


def test_several_spikes_in_one_run_with_their_start_end_and_peak() -> None:
    guard = DivergenceGuard(l0=L0, margin=MARGIN, patience=5)
    #        step: 1  2  3  4  5  6  7  8  9  10  11 12 13
    losses = [3.0, 7.0, 9.0, 6.0, 2.0, 3.0, 6.0, 4.0, 4.0, 12.0, 11.0, 5.0, 3.0]
    # step 2..4 high (7, 9, 6; 3 < patience 5), step 5 low  -> Spike(2, 5, 9)
    # step 7 high (6), step 8 low                            -> Spike(7, 8, 6): the peak restarts, it is not 9
    # step 10..11 high (12, 11), step 12 is 5.0 == threshold, which is not above it -> Spike(10, 12, 12)
    assert feed(guard, losses) == [False] * len(losses)
    assert guard.spikes == [Spike(2, 5, 9.0), Spike(7, 8, 6.0), Spike(10, 12, 12.0)]
    assert guard.spiked
    assert not guard.diverged and guard.diverged_step is None and guard.reason == ""
    assert guard.max_loss == 12.0


def test_patience_counter_restarts_after_a_spike() -> None:
    guard = DivergenceGuard(l0=L0, margin=MARGIN, patience=3)
    # steps 1-2 high (2 < 3), step 3 low -> Spike(1, 3, 9); steps 4-6 low change nothing;
    # step 7 high starts a new stretch of length 1: no divergence, and the open stretch is no spike yet.
    assert feed(guard, [9.0, 9.0, 3.0, 3.0, 3.0, 3.0, 9.0]) == [False] * 7
    assert guard.spikes == [Spike(1, 3, 9.0)]
    assert not guard.diverged and guard.diverged_step is None
    # The new stretch counts from step 7: steps 8 and 9 make it 3 long, so the run stops at step 9.
    assert feed(guard, [9.0, 9.0], first_step=8) == [False, True]
    assert guard.diverged and guard.diverged_step == 9
    assert guard.reason == "loss above l0+1 for 3 steps"
    assert guard.spikes == [Spike(1, 3, 9.0)]  # the stretch that diverged is not a spike


def test_high_for_exactly_patience_steps_diverges_on_the_last_of_them() -> None:
    guard = DivergenceGuard(l0=L0, margin=MARGIN, patience=3)
    assert feed(guard, [3.0, 6.0, 7.0, 6.5]) == [False, False, False, True]  # high at steps 2, 3, 4
    assert guard.diverged and guard.diverged_step == 4
    assert guard.spikes == [] and not guard.spiked
    assert guard.max_loss == 7.0


def test_high_for_patience_minus_one_steps_is_a_spike() -> None:
    guard = DivergenceGuard(l0=L0, margin=MARGIN, patience=3)
    assert feed(guard, [3.0, 6.0, 7.0, 4.0, 3.0]) == [False] * 5  # high at steps 2, 3 only
    assert not guard.diverged
    assert guard.spikes == [Spike(2, 4, 7.0)] and guard.spiked


def test_patience_one_stops_at_the_first_high_step_and_the_threshold_itself_is_not_high() -> None:
    guard = DivergenceGuard(l0=L0, margin=MARGIN, patience=1)
    assert feed(guard, [5.0, 5.0, 5.0 + 1e-9]) == [False, False, True]
    assert guard.diverged_step == 3 and guard.reason == "loss above l0+1 for 1 steps"


def test_a_stopped_guard_stays_stopped_and_keeps_its_record() -> None:
    guard = DivergenceGuard(l0=L0, margin=MARGIN, patience=2)
    assert feed(guard, [6.0, 8.0]) == [False, True]
    assert feed(guard, [1.0, 100.0, math.nan], first_step=3) == [True, True, True]
    assert guard.diverged_step == 2 and guard.reason == "loss above l0+1 for 2 steps"
    assert guard.max_loss == 8.0 and guard.spikes == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_stops_at_once_even_inside_a_high_stretch(bad: float) -> None:
    guard = DivergenceGuard(l0=L0, margin=MARGIN, patience=10)
    assert feed(guard, [3.0, 7.0, 2.0, 8.0, bad]) == [False, False, False, False, True]
    assert guard.diverged and guard.diverged_step == 5 and guard.reason == "non-finite loss"
    assert guard.max_loss == math.inf  # the stopping step counts, whatever the sign of the bad value
    assert guard.spikes == [Spike(2, 3, 7.0)]  # the stretch open at step 4 never closed


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_gradient_stops_at_once_and_its_finite_loss_counts(bad: float) -> None:
    guard = DivergenceGuard(l0=L0, margin=MARGIN, patience=10)
    assert feed(guard, [3.0, 2.5]) == [False, False]
    assert guard.update(3, 4.5, bad) is True
    assert guard.diverged and guard.diverged_step == 3 and guard.reason == "non-finite gradient"
    assert guard.max_loss == 4.5
    # a non-finite loss wins over a non-finite gradient
    both = DivergenceGuard(l0=L0, margin=MARGIN, patience=10)
    assert both.update(1, math.nan, bad) is True and both.reason == "non-finite loss"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_finish_with_a_non_finite_validation_loss_is_divergence(bad: float) -> None:
    guard = DivergenceGuard(l0=L0, margin=MARGIN, patience=3)
    feed(guard, [3.0, 9.0, 3.0, 2.0])  # one spike, then a clean finish of training
    guard.finish(bad, 4)
    assert guard.diverged and guard.diverged_step == 4 and guard.reason == "non-finite validation loss"
    assert guard.spikes == [Spike(2, 3, 9.0)]  # the spike stays recorded
    assert guard.max_loss == 9.0


def test_finish_with_a_finite_loss_changes_nothing_and_keeps_an_earlier_divergence() -> None:
    guard = DivergenceGuard(l0=L0, margin=MARGIN, patience=3)
    feed(guard, [3.0, 2.0])
    guard.finish(100.0, 2)  # finite, even far above l0: not divergence (the leaderboard calls it stalled)
    assert not guard.diverged and guard.diverged_step is None and guard.reason == ""

    stopped = DivergenceGuard(l0=L0, margin=MARGIN, patience=3)
    feed(stopped, [3.0, math.inf])
    stopped.finish(math.nan, 40)
    assert stopped.diverged_step == 2 and stopped.reason == "non-finite loss"


def test_an_open_high_stretch_at_the_end_is_not_a_spike() -> None:
    guard = DivergenceGuard(l0=L0, margin=MARGIN, patience=5)
    assert feed(guard, [3.0, 8.0, 9.0]) == [False, False, False]
    assert guard.spikes == [] and not guard.spiked and not guard.diverged
    assert guard.max_loss == 9.0


# --------------------------------------------------------------------------
# End to end: spikes forced into a real tiny sweep
# --------------------------------------------------------------------------

SPIKE_LR, CLEAN_LR, DIVERGE_LR = 0.03, 0.01, 0.003


class FaultAtLr(FaultInjector):
    """A `FaultInjector` that acts only in the trials trained at ``lr`` (one callback serves every trial)."""

    def __init__(self, lr: float, kind: str, step: int, size: float = 100.0) -> None:
        super().__init__(kind, step, size)
        self.lr = lr

    def _mine(self, module: pl.LightningModule) -> bool:
        return math.isclose(module.cfg.lr, self.lr, rel_tol=1e-12)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._mine(module):
            super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)


@pytest.fixture(scope="module")
def spiky_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Three trials of layernorm, one per LR:

    - ``SPIKE_LR``: +500 on the loss recorded at steps 4 and 9 -> spikes (4, 5) and (9, 10), not diverged;
    - ``CLEAN_LR``: untouched -> no spike (the tiny model's loss stays below l0 + 1, checked below);
    - ``DIVERGE_LR``: +500 at step 4, then a NaN loss at step 12 -> spike (4, 5), diverged at step 12.
    """
    from normfree_bench.config import load_run_config
    from normfree_bench.sweep.driver import run_sweep
    from normfree_bench.tables.export import write_results
    from tests.test_resilience import config

    with private_cache(tmp_path_factory.mktemp("guard")) as base:
        write_word_corpus(base / "corpus.txt", n_words=20000)
        cfg = load_run_config(config(base, "spiky", steps=30, lrs=[DIVERGE_LR, CLEAN_LR, SPIKE_LR]))
        out = base / "spiky"
        faults = [FaultAtLr(SPIKE_LR, "spike", 4, 500.0), FaultAtLr(SPIKE_LR, "spike", 9, 500.0),
                  FaultAtLr(DIVERGE_LR, "spike", 4, 500.0), FaultAtLr(DIVERGE_LR, "nan_loss", 12)]
        run_sweep(cfg, out, progress=False, callbacks=faults)
        write_results(out, plots=False)
        yield out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_spikes_reach_the_trial_record_trials_csv_and_the_leaderboard(spiky_run: Path) -> None:
    from tests.test_resilience import study_trials

    trials = {t.params["lr"]: t for t in study_trials(spiky_run) if t.state.name == "COMPLETE"}
    assert sorted(trials) == [DIVERGE_LR, CLEAN_LR, SPIKE_LR]

    spiky = trials[SPIKE_LR].user_attrs
    assert not spiky["diverged"] and spiky["spiked"] is True
    assert [(s["start"], s["end"]) for s in spiky["spikes"]] == [(4, 5), (9, 10)]
    l0 = spiky["l0"]
    for s in spiky["spikes"]:  # the recorded loss plus 500, the recorded loss being below l0 + margin
        assert 500.0 < s["peak"] < 500.0 + l0 + 1.0
    assert spiky["max_train_loss"] == max(s["peak"] for s in spiky["spikes"])

    clean = trials[CLEAN_LR].user_attrs
    assert not clean["diverged"] and clean["spiked"] is False and clean["spikes"] == []
    assert clean["max_train_loss"] <= l0 + 1.0  # so nothing but the injected faults can make a spike

    broken = trials[DIVERGE_LR].user_attrs
    assert broken["diverged"] and broken["diverged_step"] == 12 and broken["diverged_reason"] == "non-finite loss"
    assert broken["spiked"] is True and [(s["start"], s["end"]) for s in broken["spikes"]] == [(4, 5)]

    rows = {float(r["lr"]): r for r in read_csv(spiky_run / "trials.csv")}
    assert sorted(rows) == [DIVERGE_LR, CLEAN_LR, SPIKE_LR]
    assert (rows[SPIKE_LR]["spiked"], rows[SPIKE_LR]["n_spikes"], rows[SPIKE_LR]["diverged"]) == ("True", "2", "False")
    assert (rows[CLEAN_LR]["spiked"], rows[CLEAN_LR]["n_spikes"], rows[CLEAN_LR]["diverged"]) == ("False", "0", "False")
    assert (rows[DIVERGE_LR]["spiked"], rows[DIVERGE_LR]["n_spikes"], rows[DIVERGE_LR]["diverged"]) \
        == ("True", "1", "True")

    # The leaderboard counts spiked tuning trials that did not diverge: only the SPIKE_LR trial, of 3.
    board = json.loads((spiky_run / "leaderboard.json").read_text())
    assert len(board) == 1 and board[0]["verdict"] == "trained"
    assert (board[0]["spiked"], board[0]["spiked_count"], board[0]["diverged"]) == ("1/3", 1, "1/3")
    table = read_csv(spiky_run / "leaderboard.csv")
    assert (table[0]["spiked"], table[0]["spiked_count"]) == ("1/3", "1")
