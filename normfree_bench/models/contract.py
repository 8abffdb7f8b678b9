"""The contract every baseline must meet, run on a tiny CPU model (``normfree-bench baselines check``), and
the state a baseline starts training from under each init protocol.

Usage: ``for check in check_baseline("dyt"): print(check.name, check.ok, check.detail)``;
``state = init_state("fixup", tiny_config(), init="paper")``
"""

from __future__ import annotations

import copy
import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from normfree_bench.config import ModelConfig
from normfree_bench.models.factory import build_model
from normfree_bench.models.transformer import Transformer, task_loss

NORM_CLASSES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


def tiny_config(preset: str = "gpt2") -> ModelConfig:
    return ModelConfig.from_preset(preset, d_model=32, n_layers=2, n_heads=4, context_length=16)


def tiny_batch(config: ModelConfig, batch: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch, config.context_length), generator=gen)


def lm_loss(model: Transformer, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids[:, :-1])
    return task_loss(logits, ids[:, 1:])


def check_forward(model: Transformer, ids: torch.Tensor) -> str:
    out = model(ids)
    want = (*ids.shape, model.config.vocab_size)
    if tuple(out.shape) != want:
        return f"output shape {tuple(out.shape)}, expected {want}"
    if not torch.isfinite(out).all():
        return "non-finite logits at init"
    return ""


def check_backward(model: Transformer, ids: torch.Tensor) -> str:
    model.zero_grad(set_to_none=True)
    loss = lm_loss(model, ids)
    loss.backward()
    if not torch.isfinite(loss):
        return f"non-finite loss {loss.item()}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    return f"non-finite gradients in {bad[:3]}" if bad else ""


def check_param_groups(model: Transformer, ids: torch.Tensor) -> str:
    groups = model.baseline.param_groups(model, 1e-3, 0.1)
    seen: dict[int, int] = {}
    for group in groups:
        for p in group["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [n for i, n in names.items() if seen.get(i, 0) == 0]
    twice = [names.get(i, "?") for i, c in seen.items() if c > 1]
    extra = [i for i in seen if i not in names]
    if missing or twice or extra:
        return f"missing {missing[:3]}, in several groups {twice[:3]}, not in the model: {len(extra)}"
    return ""


def check_state_dict(model: Transformer, ids: torch.Tensor) -> str:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(12345)
    clone = Transformer(model.config, copy.deepcopy(type(model.baseline)(model.config, **model.baseline.hp)))
    clone.load_state_dict(torch.load(buf, weights_only=True))
    model.eval()
    clone.eval()
    with torch.no_grad():
        same = torch.equal(model(ids), clone(ids))
    return "" if same else "a model loaded from the state_dict gives different outputs"


def check_norm_free(model: Transformer, ids: torch.Tensor) -> str:
    if not model.baseline.norm_free:
        return ""
    left = [n for n, m in model.named_modules() if isinstance(m, NORM_CLASSES)]
    return f"claims to be norm-free but has {left[:3]}" if left else ""


def check_invariants(model: Transformer, ids: torch.Tensor) -> str:
    return "; ".join(model.baseline.check_init(model, ids))


def check_trains(model: Transformer, ids: torch.Tensor) -> str:
    """Ten AdamW steps through the baseline's groups and clipping on one batch lower the loss."""
    groups = model.baseline.param_groups(model, 1e-3, 0.0)
    opt = torch.optim.AdamW(groups, lr=1e-3)
    for group in opt.param_groups:
        group["lr"] = 1e-3 * group.get("lr_scale", 1.0)
    model.train()
    first = lm_loss(model, ids).item()
    for _ in range(10):
        opt.zero_grad(set_to_none=True)
        loss = lm_loss(model, ids)
        loss.backward()
        model.baseline.clip_gradients(model, 1.0)
        opt.step()
    last = lm_loss(model, ids).item()
    return "" if last < first else f"loss did not fall on one batch: {first:.4f} -> {last:.4f}"


CHECKS: dict[str, Callable[[Transformer, torch.Tensor], str]] = {
    "forward": check_forward,
    "backward": check_backward,
    "param_groups": check_param_groups,
    "state_dict": check_state_dict,
    "norm_free": check_norm_free,
    "invariants": check_invariants,
    "trains": check_trains,
}


def check_baseline(name: str, presets: tuple[str, ...] = ("gpt2", "llama")) -> list[Check]:
    """Run every contract check on a fresh tiny model per check, for each model preset."""
    results = []
    for preset in presets:
        config = tiny_config(preset)
        ids = tiny_batch(config)
        for check_name, fn in CHECKS.items():
            label = f"{check_name} ({preset})"
            try:
                torch.manual_seed(0)
                detail = fn(build_model(name, config), ids)
            except Exception as exc:  # a plugin's bug is a failed check, not a crash
                detail = f"{type(exc).__name__}: {exc}"
            results.append(Check(label, not detail, detail))
    return results


@dataclass
class InitState:
    """What a model looks like at init on one batch: the evidence behind each scheme's promise (Fixup's
    unit-variance stream and silent branches, NF's variance schedule, ReZero's and SkipInit's silent
    branches, a near-uniform first prediction)."""

    init: str  # the protocol (model.init)
    rule: str  # the network rule it resolved to (normfree_bench.core.inits)
    stream_std: list[float]  # the residual stream entering each block, then entering the final site
    branch_std: list[float]  # what each branch adds to the stream (attn, mlp of each block)
    logit_std: float
    initial_loss: float


@torch.no_grad()
def init_state(name: str, config: ModelConfig, init: str, ids: torch.Tensor | None = None) -> InitState:
    """Build ``name`` under ``model.init: init`` (seed 0) and measure it on ``ids`` (a tiny LM batch)."""
    config = dataclasses.replace(config, init=init)
    ids = tiny_batch(config) if ids is None else ids
    torch.manual_seed(0)
    model = build_model(name, config)
    model.eval()
    x = model.embed(ids[:, :-1])
    streams, branches = [float(x.std())], []
    for block in model.blocks:  # the block's forward, one branch at a time
        for branch in ("attn", "mlp"):
            y = block.sublayer(x, branch)
            branches.append(float((y - x).std()))
            x = y
        streams.append(float(x.std()))
    logits = model(ids[:, :-1])
    rule = "gpt2" if init == "shared" else model.baseline.network_init()
    return InitState(init, rule, streams, branches, float(logits.std()), float(task_loss(logits, ids[:, 1:])))
