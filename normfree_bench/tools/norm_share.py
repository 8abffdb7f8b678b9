"""The norm layers' share of a training step, from a torch.profiler trace.

Usage: ``share = norm_share(model, lambda: train_step(model, ...)); share["norm_share_pct"]``

Method (the speed suite's model rows report it as ``norm_ms`` and ``norm_share_pct``):

1. For the profiled steps, every norm site of the model (``model.norm_sites()``: before attention, before
   the MLP, final) is wrapped in a module that runs it inside ``record_function("norm_site")``; the
   wrappers are removed afterwards. A wrapper (not a forward hook) so that compiled norm modules are
   labelled as well: a hook would run inside their compiled call.
2. Forward: every profiler event inside a ``norm_site`` range belongs to the norms (the range's own self
   time too: the module's Python overhead between ops).
3. Backward: autograd records each backward node as an ``autograd::engine::evaluate_function: ...`` event
   carrying the sequence number of the forward op that created it. A backward event whose sequence number
   is that of an op inside a ``norm_site`` range belongs to the norms, with everything under it. Gradient
   accumulation into the norms' parameters (``AccumulateGrad``, sequence number -1) and their optimizer
   update are not attributed: O(d) work.
4. ``norm_ms`` is the sum of the self times of the norms' events, ``total_ms`` the sum of the self times of
   all events of the step (forward, backward and optimizer), ``norm_share_pct = 100 * norm_ms / total_ms``.
   Self time is CPU time on CPU and device (kernel) time on CUDA, where CPU time is launch overhead.

On CPU the profiled steps run on one intra-op thread (`PROFILE_CPU_THREADS`), so the share is that of a
single-threaded step, whatever thread count the timings used. Summing self times counts each microsecond
once (events nest). Python time outside any op and outside the
norm modules is in neither sum, so the share is of the time spent in ops, not of the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

# On CPU the profiled steps run on one intra-op thread: with two, torch 2.14's profiler stalled every op for
# about a scheduler time slice (24 ms, even a 32 x 32 matmul) on the 2-core reference machine while another
# process ran, which swamps the figure. Both the norms and the rest of the step are then single-threaded.
PROFILE_CPU_THREADS = 1
LABEL = "norm_site"
BACKWARD = "autograd::engine::evaluate_function: "


class _Labelled(nn.Module):
    """Runs ``inner`` inside a profiler range named `LABEL`."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with record_function(LABEL):
            return self.inner(x)


@contextmanager
def labelled_norms(model: nn.Module) -> Iterator[None]:
    """Every norm site of ``model`` (a model with ``norm_sites()``) wrapped in a `_Labelled` module meanwhile."""
    swapped = []
    for _, _, name, module in list(model.norm_sites()):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _Labelled(module))
        swapped.append((parent, attr, module))
    try:
        yield
    finally:
        for parent, attr, module in swapped:
            setattr(parent, attr, module)


def _self_time(event: Any, cuda: bool) -> float:
    return event.self_device_time_total if cuda else event.self_cpu_time_total


def attribute(events: list[Any], cuda: bool) -> tuple[float, float]:
    """(norm time, total time) in microseconds of a profiler's events, by the method of the module docstring."""
    def ancestors(event: Any) -> Iterator[Any]:
        while event is not None:
            yield event
            event = event.cpu_parent

    in_norm_fwd = {id(e) for e in events if any(a.name == LABEL for a in ancestors(e))}
    norm_seq = {e.sequence_nr for e in events if id(e) in in_norm_fwd and e.sequence_nr >= 0}
    norm_bwd_roots = {id(e) for e in events if e.name.startswith(BACKWARD) and e.sequence_nr in norm_seq}
    norm = total = 0.0
    for e in events:
        t = _self_time(e, cuda)
        total += t
        if id(e) in in_norm_fwd or any(id(a) in norm_bwd_roots for a in ancestors(e)):
            norm += t
    return norm, total


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` meanwhile (None: unchanged)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def norm_share(model: nn.Module, step: Callable[[], Any], steps: int = 1) -> dict[str, float]:
    """Profile ``steps`` calls of ``step`` (one training step of ``model``) and attribute its time to the
    norm sites: ``{"norm_ms", "total_ms", "norm_share_pct"}`` per step."""
    cuda = any(p.is_cuda for p in model.parameters())
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with labelled_norms(model), cpu_threads(None if cuda else PROFILE_CPU_THREADS):
        step()  # a warm call with the wrappers in place
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            if cuda:
                torch.cuda.synchronize()
    norm, total = attribute(list(prof.events()), cuda)
    return {"norm_ms": norm / 1e3 / steps, "total_ms": total / 1e3 / steps,
            "norm_share_pct": 100 * norm / total if total > 0 else float("nan")}
