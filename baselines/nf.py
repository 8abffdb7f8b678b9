"""NF-style scaled residuals: ``x + alpha * g * F(x / beta_l)`` with Scaled WS and adaptive gradient clipping.

Usage: ``normfree-bench train --baseline nf``

Papers: Brock, De, Smith, "Characterizing signal propagation to close the performance gap in
unnormalized ResNets", ICLR 2021, https://arxiv.org/abs/2101.08692, and Brock, De, Smith, Simonyan,
"High-Performance Large-Scale Image Recognition Without Normalization", ICML 2021,
https://arxiv.org/abs/2102.06171; official code ``google-deepmind/deepmind-research:nfnets``.
No official NF *Transformer* exists; this adapts the NF rules to the pre-norm block as proposed in
the harness's scheme reference (§7.4), and each adaptation is listed here.

From the NF code:
- ``beta_l = expected_std_l`` of the stream entering branch l, with
  ``expected_std_{l+1}^2 = expected_std_l^2 + alpha^2`` and alpha = 0.2; the branch sees ``x / beta_l``.
- a scalar skip gain g per branch, init 0 (``skipinit_gain=zeros``), so the schedule is the
  "as-if g = 1" bookkeeping and every branch is silent at init.
- Scaled Weight Standardization on every branch linear (Q, K, V, O, fc1 / SwiGLU inputs, fc2):
  ``W_hat = gain * (W - mean_fanin) / sqrt(max(fan_in * var_fanin, 1e-4))``, gain per output (init 1).
- the activation is scaled to preserve unit variance: GELU x 1.7015043497085571 (the NF constant);
  SwiGLU has no published constant, so ``1/std(silu(z1) * z2)`` is computed numerically.
- adaptive gradient clipping, unit-wise, lambda = 0.01, eps = 1e-3 (NFNet-F0), replacing global-norm
  clipping (``clipping: agc``); the head's weight is excluded, as NFNets exclude the classifier's weight
  (``experiment_nfnets.py``: ``{'params': fc_weights, 'clipping': None}``), and so are the embeddings
  (the scheme reference's adaptation, §7.4); the gains, biases and skip gains are clipped, as in NFNets.
- no weight decay on any gain or bias (NFNets' ``pred_gb``: names with ``gain``/``bias``, the skip
  gains included), whatever its shape: the Scaled-WS gains have shape (out, 1), which the harness's
  1-D rule alone would decay.
- the rest of the network (``model.init: paper``): Haiku's defaults, the ``lecun`` rule of
  normfree_bench.core.inits: weights from a normal of std 1/sqrt(fan_in) cut at +-2 std and not rescaled
  (``hk.initializers.TruncatedNormal``, so the variance is 0.774/fan_in; Scaled WS standardises the branch
  weights anyway) and ``hk.Embed``'s std-1 truncated normal for the token embedding (variance 0.774), so
  sigma_0^2 is about 0.77 and 1/beta_1 about 1.14 (measured, not assumed: see below); the head
  N(0, 0.01) (NFNets' classifier init). ``model.init: shared`` keeps the harness's GPT-2 init (then
  sigma_0^2 is about 0.02^2 and the first branch sees its input scaled up accordingly).

AGC under AdamW: Adam divides each update by a running RMS of the gradient, so AGC's rescaling of a
unit's gradient changes Adam's step only where the rescaling factor varies between steps; NFNets pair
AGC with SGD, where it bounds the step directly. ``clipping: agc`` is the paper's rule as written;
``global`` clips the global gradient norm at ``train.grad_clip`` as every other scheme here, and
``both`` applies AGC, then the global norm. The leaderboard's ``nf`` is ``clipping: agc``, ``final: scale``.

Adaptations (choices):
- sigma_0^2, the variance of the embedding output at init, is computed from the initialised
  embedding weights (times the fan-in for the ViT's patch convolution, whose standardised input has
  unit variance) and starts the schedule.
- no norm at the attention and MLP sites. The final site divides by beta_{L+1} (a constant, no
  learned or per-token statistic), so the model stays norm-free; ``final: layernorm`` keeps a final
  LayerNorm instead (the OP block of He et al. 2024 keeps one).
- attention averages over tokens and so shrinks variance: the analytic schedule over-estimates the
  stream's variance (the safe direction; option (a) of the reference), so later branches see inputs
  smaller than unit variance. ``check_init`` verifies both facts: each MLP branch preserves unit
  variance, and the measured stream stays at or below its schedule.
"""

import math
from typing import Literal

import numpy as np
import torch
from timm.utils.agc import adaptive_clip_grad
from torch import nn
from torch.nn.utils import parametrize

from normfree_bench import Baseline, register_baseline
from normfree_bench.core.invariants import block_streams, branches_are_silent
from normfree_bench.core.layers import Residual, Scale, make_norm

GELU_GAMMA = 1.7015043497085571  # deepmind-research nfnets/base.py


def swiglu_gamma() -> float:
    """1 / std(silu(z1) * z2) for independent standard normals, by Gauss-Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(200)
    silu = z / (1 + np.exp(-z))
    second_moment = float(np.sum(w * silu**2) / np.sum(w))  # E[silu(z)^2]; E[z2^2] = 1, mean is 0
    return 1.0 / math.sqrt(second_moment)


class ScaledWS(nn.Module):
    """Scaled Weight Standardization as a parametrization of a Linear's weight (out, in)."""

    def __init__(self, out_features: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(out_features, 1))
        self.eps = eps

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        fan_in = weight.shape[1]
        mean = weight.mean(dim=1, keepdim=True)
        var = weight.var(dim=1, unbiased=False, keepdim=True)
        return self.gain * (weight - mean) * torch.rsqrt(torch.clamp(fan_in * var, min=self.eps))


class NFResidual(Residual):
    """``x + alpha * g * F(x * inv_beta)``; inv_beta is a buffer set by ``NF.init_``."""

    def __init__(self, alpha: float, gain_init: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.skip_gain = nn.Parameter(torch.full((1,), float(gain_init)))
        self.register_buffer("inv_beta", torch.ones(1))

    def branch_input(self, x):
        return x * self.inv_beta

    def combine(self, x, y):
        return x + self.alpha * self.skip_gain * y


class ScaledActivation(nn.Module):
    def __init__(self, act: nn.Module, gamma: float) -> None:
        super().__init__()
        self.act, self.gamma = act, gamma

    def forward(self, x):
        return self.act(x) * self.gamma


@register_baseline
class NF(Baseline):
    name = "nf"
    description = "NF-style x + alpha*g*F(x/beta), Scaled WS, skip gain 0, adaptive gradient clipping"
    paper = "https://arxiv.org/abs/2102.06171"
    norm_free = True
    hparams = {"alpha": 0.2, "skip_gain_init": 0.0, "agc_clip": 0.01, "agc_eps": 1e-3, "final": "scale",
               "clipping": "agc"}
    hparam_types = {"final": Literal["scale", "layernorm"], "clipping": Literal["agc", "global", "both"]}

    def __init__(self, config, **hparams) -> None:
        super().__init__(config, **hparams)
        self.norm_free = self.hp["final"] == "scale"

    def norm(self, dim, site, layer_idx, n_layers):
        if site == "final":
            if self.hp["final"] == "layernorm":
                return make_norm("layernorm", dim, bias=self.config.bias)
            return Scale(1.0, learnable=False)  # set to 1/beta_{L+1} by init_
        return nn.Identity()

    def residual(self, dim, branch, layer_idx, n_layers):
        return NFResidual(self.hp["alpha"], self.hp["skip_gain_init"])

    def network_init(self) -> str:
        return "lecun"

    def param_groups(self, model, lr, weight_decay):
        """The harness's groups, with every Scaled-WS gain moved to the no-decay group (NFNets decay no
        gain or bias, whatever its shape)."""
        gains = {id(m.gain) for m in model.modules() if isinstance(m, ScaledWS)}
        groups = super().param_groups(model, lr, weight_decay)
        moved = []
        for group in groups:
            if group.get("weight_decay", weight_decay) > 0:
                moved += [p for p in group["params"] if id(p) in gains]
                group["params"] = [p for p in group["params"] if id(p) not in gains]
        if moved:
            groups.append({"params": moved, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    def activation(self):
        if self.config.mlp == "swiglu":
            return ScaledActivation(nn.SiLU(), swiglu_gamma())
        return ScaledActivation(nn.GELU(), GELU_GAMMA)

    def expected_variances(self, model) -> list[float]:
        """The analytic stream variance entering each branch, then entering the final site."""
        sigma0_sq = sum(self._output_variance(e) for e in model.embeddings())
        n_branches = 2 * model.config.n_layers
        return [sigma0_sq + k * self.hp["alpha"] ** 2 for k in range(n_branches + 1)]

    @staticmethod
    def _output_variance(embedding) -> float:
        """Variance an embedding adds to the stream at init: a table's (or position tensor's) entries
        directly, a patch convolution's weights times its fan-in (the images are standardised)."""
        if isinstance(embedding, nn.Parameter):
            return float(embedding.detach().var())
        weight = embedding.weight.detach()
        fan_in = weight[0].numel() if isinstance(embedding, nn.Conv2d) else 1
        return fan_in * float(weight.var())

    @staticmethod
    def _embedding_weights(model) -> list[torch.Tensor]:
        return [e if isinstance(e, nn.Parameter) else e.weight for e in model.embeddings()]

    def init_(self, model) -> None:
        for _, _, linear in model.branch_linears():
            if not parametrize.is_parametrized(linear, "weight"):
                parametrize.register_parametrization(linear, "weight", ScaledWS(linear.out_features))
        variances = self.expected_variances(model)
        residuals = [residual for _, _, _, residual in model.residual_sites()]
        for residual, var in zip(residuals, variances):
            residual.inv_beta.fill_(var**-0.5)
        if isinstance(model.norm_final, Scale):
            model.norm_final.scale.fill_(variances[-1] ** -0.5)
        if self.config.init == "paper":
            nn.init.normal_(model.head.weight, std=0.01)
            if model.head.bias is not None:
                nn.init.zeros_(model.head.bias)

    def clip_gradients(self, model, max_norm):
        params = [p for p in model.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.hp["clipping"] in ("agc", "both"):
            excluded = {id(w) for w in self._embedding_weights(model)} | {id(model.head.weight)}
            adaptive_clip_grad([p for p in params if id(p) not in excluded],
                               clip_factor=self.hp["agc_clip"], eps=self.hp["agc_eps"])
        if self.hp["clipping"] in ("global", "both") and max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        return total

    def check_init(self, model, batch):
        problems = branches_are_silent(model, batch) if self.hp["skip_gain_init"] == 0 else []
        # Signal propagation: with unit-variance input, every MLP branch (Scaled WS + scaled
        # activation) returns unit variance.
        generator = torch.Generator().manual_seed(0)
        for block in model.blocks:
            z = torch.randn(64, 16, model.config.d_model, generator=generator)  # enough samples to estimate it
            with torch.no_grad():
                var = block.mlp(z).var().item()
            if not 0.7 <= var <= 1.4:
                problems.append(f"block {block.layer_idx} MLP maps unit variance to {var:.2f}")
        # With every skip gain at 1, the measured stream variance stays at or below the analytic
        # schedule: attention averages over tokens and adds less than alpha^2 (the safe direction).
        gains = [residual.skip_gain for _, _, _, residual in model.residual_sites()]
        saved = [g.detach().clone() for g in gains]
        with torch.no_grad():
            for g in gains:
                g.fill_(1.0)
            streams = block_streams(model, batch)
            for g, s in zip(gains, saved):
                g.copy_(s)
        expected = self.expected_variances(model)[::2]  # stream variance entering each block
        for i, (stream, var) in enumerate(zip(streams, expected)):
            ratio = stream.var().item() / var
            if ratio > 1.15:
                problems.append(f"stream variance before block {i} is {ratio:.2f}x its NF schedule (above it)")
        return problems
