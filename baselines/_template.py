"""Template for a new baseline: copy to ``baselines/<name>.py`` (files starting with _ are skipped).

Usage: ``cp baselines/_template.py baselines/mynorm.py``, edit, then ``normfree-bench baselines check mynorm``

State the paper link and every choice where the literature is ambiguous in this docstring.
Override only the hooks that differ from the pre-LN Transformer; see normfree_bench/core/baseline.py.
"""

from torch import nn

from normfree_bench import Baseline, register_baseline


@register_baseline
class MyNorm(Baseline):
    name = "mynorm"  # lowercase, unique
    description = "one line for `normfree-bench baselines list`"
    paper = "https://arxiv.org/abs/..."
    norm_free = False  # True if no LayerNorm/RMSNorm may remain
    hparams = {"eps": 1e-6}  # named hyperparameters a sweep may vary (self.hp["eps"])
    placements = ("pre", "post", "res_post", "sandwich")  # model.placement values it supports; the first is its own

    def norm(self, dim: int, site: str, layer_idx: int, n_layers: int) -> nn.Module:
        # site is "attn", "mlp" or "final" (for final, layer_idx == n_layers); under model.placement
        # sandwich also "attn_out" and "mlp_out" (the norm on each branch's output)
        return nn.RMSNorm(dim, eps=self.hp["eps"])

    # Other hooks, with their defaults in normfree_bench.core.baseline.Baseline:
    # residual(dim, branch, layer_idx, n_layers) -> Residual   (x + y)
    # activation() -> nn.Module                                  (GELU, or SiLU for SwiGLU)
    # embedding_scale(dim) -> nn.Module                          (identity)
    # init_(model)                                               (nothing after GPT-2 init)
    # param_groups(model, lr, weight_decay) -> list[dict]        (no decay on 1-D params)
    # clip_gradients(model, max_norm) -> Tensor                  (global-norm clipping)
    # check_init(model, batch) -> list[str]                      (invariants at init)
