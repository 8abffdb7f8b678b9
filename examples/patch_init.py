"""A controlled ablation of the ViT patch embedding's init: LayerNorm and DyT under the timm init
(``model.init: paper``), except that the patch convolution is re-drawn from N(0, 0.02) as the shared GPT-2
rule draws it. Everything else, the seed included, is as in ``layernorm`` and ``dyt``.

Usage::

    normfree-bench run --suite vision --plugin examples/patch_init.py \\
        --baselines layernorm,dyt,layernorm_patch002,dyt_patch002 --out runs/vision-patch-init

Why: timm leaves the patch convolution at PyTorch's default, U(+-1/sqrt(fan_in)); with 2x2 grey patches
(fan_in 4) that is a weight std of 0.29, fifteen times the 0.02 the GPT-2 rule gives it. A point-wise
norm passes the small patch embedding on nearly linearly (tanh is the identity near 0), so under 0.02
DyT's first predictions are almost constant; LayerNorm rescales every site to unit scale and does not
care. The two plugins isolate that one difference (README, "Init").
"""

from timm.layers import trunc_normal_

from normfree_bench import ModelView, get_baseline, register_baseline

LayerNorm, DyT = get_baseline("layernorm"), get_baseline("dyt")  # the registered classes, not new copies


def patch_at_002(model: ModelView) -> None:
    """The GPT-2 rule's draw for the patch convolution (a ViT only: an LM keeps its token embedding)."""
    if model.config.task != "vit":
        return
    patch = model.embeddings()[0]
    trunc_normal_(patch.weight, std=0.02)
    if patch.bias is not None:
        patch.bias.zero_()


@register_baseline
class LayerNormPatch002(LayerNorm):
    name = "layernorm_patch002"
    description = "layernorm with the ViT patch convolution at N(0, 0.02) instead of timm's default"
    group = "ablation"

    def init_(self, model: ModelView) -> None:
        super().init_(model)
        patch_at_002(model)


@register_baseline
class DyTPatch002(DyT):
    name = "dyt_patch002"
    description = "dyt with the ViT patch convolution at N(0, 0.02) instead of timm's default"
    group = "ablation"

    def init_(self, model: ModelView) -> None:
        super().init_(model)
        patch_at_002(model)
