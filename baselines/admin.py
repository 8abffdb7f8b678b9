"""Admin: post-LN with a per-channel skip weight omega, ``LN(omega * x + F(x))``, set by a profiling pass.

Usage: ``normfree-bench train --baseline admin``   (post-LN: its only ``model.placement``;
``hparams: {admin: {omega_init: logn}}`` for admin-torch's closed form instead of profiling)

Paper: Liu, Liu, Gao, Chen, Han, "Understanding the Difficulty of Training Transformers", EMNLP 2020,
https://arxiv.org/abs/2004.08249; official code ``LiyuanLucasLiu/Transformer-Clinic``
(``fairseq/fairseq/modules/transformer_layer.py``: ``x0 = x + residual * self.attention_ratio_change``, then the
LayerNorm; ``--init-type adaptive-profiling`` writes the omegas, ``adaptive`` trains with them) and
``microsoft/admin-torch`` (``admin_torch/admin.py``).

- Every sublayer (attention, then the MLP) is ``x_i = LN(omega_i * x_{i-1} + F_i(x_{i-1}))`` with omega_i a
  learnable per-channel vector (``nn.Parameter(torch.ones(embed_dim))`` filled with one value); no final
  LayerNorm (post-LN). The decoder-only model has 2N residual sublayers, attention and MLP each counted.
- ``omega_init: profile`` (the paper's Admin): one forward pass with a running value r = 1; at each sublayer in
  order omega_i is filled with r, then r <- sqrt(Var[omega_i * x_{i-1}] + Var[F_i(x_{i-1})]) (variances over
  every element, population form, as the code's ``np.var``), the pass continuing with the new omega. So
  omega_1 = 1 and omega_i^2 ~ Var[x_0] + sum_{j<i} Var[F_j] after the first LayerNorm.
- ``omega_init: logn``: admin-torch's default without profiling, omega = sqrt((n + 1) / ln(n + 1) - 1) with
  n = 2N residual sublayers (its ``O(logn)`` scale), as a learnable vector here too.
- The rest, shared with DeepNorm (`normfree_bench.core.post_ln.FairseqPostLN`): fairseq's init (the `fairseq`
  rule: Xavier-uniform matrices with the fused q/k/v as one, zero biases, N(0, d^-1/2) embedding, positions and
  untied head) with the token embedding times a fixed sqrt(d); LayerNorm eps 1e-5.

Choices where the sources differ or do not reach:
- The profiling batch: the official code profiles one training batch (dropout on, padding included) and
  exits; a baseline's init sees no data, so we profile a fixed synthetic batch (8 sequences of uniform random
  tokens from a private seeded generator, or N(0, 1) pixels for the ViT), which leaves the global RNG as it
  was. At init every token's embedding row is drawn alike, so the variances do not depend on which tokens
  they are; ``check_init`` confirms the profile on the real batch within 20 %.
- The official code has an encoder-decoder only (3 sublayers per decoder layer); the decoder-only recurrence
  is the encoder's (2 per layer) over the causal blocks.
- The harness's optimizer rules apply (no weight decay on omega, a 1-D parameter; fairseq decays everything).
"""

import math
from typing import Literal

import torch
from torch import nn

from normfree_bench import register_baseline
from normfree_bench.core.invariants import sites_normalize
from normfree_bench.core.layers import SkipScaledResidual
from normfree_bench.core.post_ln import LN_EPS, FairseqPostLN

PROFILE_BATCH = 8


def logn_omega(n_sublayers: int) -> float:
    """admin-torch's ``O(logn)`` omega for ``n_sublayers`` residual sublayers."""
    n = n_sublayers
    return math.sqrt((n + 1) / math.log(n + 1) - 1)


def profiling_batch(config) -> torch.Tensor:
    """The fixed synthetic batch the profile runs on (its own generator: the global RNG is untouched)."""
    gen = torch.Generator().manual_seed(0)
    if config.task == "vit":
        return torch.randn(PROFILE_BATCH, config.in_chans, config.image_size, config.image_size, generator=gen)
    return torch.randint(0, config.vocab_size, (PROFILE_BATCH, config.n_tokens), generator=gen)


@torch.no_grad()
def profile_omegas(model, inputs: torch.Tensor, write: bool = True) -> list[tuple[float, float, float]]:
    """Run the profiling recurrence on ``inputs``: per sublayer, (omega_i, Var[omega_i * x_{i-1}], Var[F_i]).
    ``write`` fills each omega_i as the pass reaches it (as the official code does)."""
    x = model.embed(inputs)
    r, out = 1.0, []
    for block in model.blocks:
        for branch in ("attn", "mlp"):
            res, norm, f = getattr(block, f"res_{branch}"), getattr(block, f"norm_{branch}"), getattr(block, branch)
            if write:
                res.gain.fill_(r)
            omega = res.gain
            y = f(res.branch_input(x))
            skip_var, branch_var = (omega * x).var(unbiased=False).item(), y.var(unbiased=False).item()
            out.append((r, skip_var, branch_var))
            r = math.sqrt(skip_var + branch_var)
            x = norm(res.combine(x, y))
    return out


@register_baseline
class Admin(FairseqPostLN):
    name = "admin"
    description = "post-LN with LN(omega x + F(x)), per-channel omega set by Admin's profiling pass"
    paper = "https://arxiv.org/abs/2004.08249"
    hparams = {"omega_init": "profile"}
    hparam_types = {"omega_init": Literal["profile", "logn"]}

    def residual(self, dim, branch, layer_idx, n_layers):
        return SkipScaledResidual(nn.Parameter(torch.ones(dim)))

    def init_(self, model):
        if self.hp["omega_init"] == "logn":
            value = logn_omega(2 * len(model.blocks))
            for _, _, _, res in model.residual_sites():
                res.gain.fill_(value)
            return
        was_training = model.training
        model.eval()
        profile_omegas(model, profiling_batch(self.config))
        model.train(was_training)

    def check_init(self, model, batch):
        problems = sites_normalize(model, batch, "layernorm", eps=LN_EPS)
        sites = list(model.residual_sites())
        for _, _, name, res in sites:
            if not isinstance(res, SkipScaledResidual) or not isinstance(res.gain, nn.Parameter) \
                    or res.gain.shape != (self.config.d_model,):
                problems.append(f"{name}: the skip must be scaled by a learnable per-channel omega")
            elif not torch.all(res.gain == res.gain[0]):
                problems.append(f"{name}: omega must start as one value in every channel")
        if problems:
            return problems
        if self.hp["omega_init"] == "logn":
            want = logn_omega(2 * len(model.blocks))
            return [f"{name}: omega must start at sqrt((n+1)/ln(n+1) - 1) = {want:.4g}"
                    for _, _, name, res in sites if not math.isclose(res.gain[0].item(), want, rel_tol=1e-6)]
        if sites[0][3].gain[0].item() != 1.0:
            problems.append(f"{sites[0][2]}: the first omega must be exactly 1")
        profile = profile_omegas(model, batch, write=False)  # the real batch: the same recurrence within 20 %
        r = 1.0
        for (_, _, name, res), (_, skip_var, branch_var) in zip(sites, profile):
            if not math.isclose(res.gain[0].item(), r, rel_tol=0.2):
                problems.append(f"{name}: omega {res.gain[0].item():.4g}, but the profile of this batch gives {r:.4g}")
            r = math.sqrt(skip_var + branch_var)
        return problems
