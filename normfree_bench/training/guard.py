"""The divergence guard: tells a diverged run from one that spiked and recovered.

Usage::

    guard = DivergenceGuard(l0=math.log(256), margin=1.0, patience=50)
    stop = guard.update(step, loss, grad_norm)   # True: stop training now
    guard.finish(final_val_loss, step)           # a non-finite final validation loss is divergence too

Rules (all thresholds from ``GuardConfig``):
1. a non-finite loss or gradient norm stops the run at once and records the step;
2. a finite loss stops the run only after it has stayed above ``l0 + margin`` for ``patience``
   consecutive steps (norm-free models often spike far above l0 early and then recover);
3. a run whose final validation loss is not finite counts as diverged;
4. a stretch above ``l0 + margin`` that came back down is a *spike*: recorded with its start, end
   and peak, never called divergence.

A run that ends with a finite loss that learned nothing (at chance, or stuck at the unigram loss) is
not diverged: the leaderboard calls it *stalled* (normfree_bench.tables.leaderboard). ``max_loss``
includes the step that stopped the run (infinite for a non-finite loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Spike:
    start: int
    end: int
    peak: float


@dataclass
class DivergenceGuard:
    l0: float
    margin: float = 1.0
    patience: int = 50
    diverged: bool = False
    diverged_step: int | None = None
    reason: str = ""
    max_loss: float = -math.inf
    spikes: list[Spike] = field(default_factory=list)
    _high_since: int | None = None
    _high_peak: float = -math.inf

    @property
    def threshold(self) -> float:
        return self.l0 + self.margin

    def _stop(self, step: int, reason: str) -> bool:
        self.diverged, self.diverged_step, self.reason = True, step, reason
        return True

    def update(self, step: int, loss: float, grad_norm: float = 0.0) -> bool:
        """Record the loss and gradient norm of ``step``; return True when training must stop."""
        if self.diverged:
            return True
        if not math.isfinite(loss):
            self.max_loss = math.inf  # the stopping step counts: a non-finite loss is as high as a loss gets
            return self._stop(step, "non-finite loss")
        self.max_loss = max(self.max_loss, loss)
        if not math.isfinite(grad_norm):
            return self._stop(step, "non-finite gradient")
        if loss > self.threshold:
            if self._high_since is None:
                self._high_since, self._high_peak = step, loss
            self._high_peak = max(self._high_peak, loss)
            if step - self._high_since + 1 >= self.patience:
                return self._stop(step, f"loss above l0+{self.margin:g} for {self.patience} steps")
        elif self._high_since is not None:
            self.spikes.append(Spike(self._high_since, step, self._high_peak))
            self._high_since = None
        return False

    def finish(self, final_val_loss: float, step: int) -> None:
        """Apply rule 3 once training has ended."""
        if not self.diverged and not math.isfinite(final_val_loss):
            self._stop(step, "non-finite validation loss")

    @property
    def spiked(self) -> bool:
        return bool(self.spikes)
