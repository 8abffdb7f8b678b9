"""Build a model under a baseline: the factory beside the registry (as timm keeps ``create_model`` apart from
its models).

Usage: ``model = build_model("dyt", ModelConfig(d_model=64), alpha_init=0.5)``;
``build_model("dyt", ModelConfig(task="vit", backbone="timm:vit_tiny_patch16_224"))``

``model.backbone: native`` builds this package's Transformer. ``timm:<name>`` builds timm's own model
with ``timm.create_model`` at this config's size (``embed_dim=d_model``, ``depth=n_layers``,
``num_heads=n_heads``, ``mlp_ratio``, ``img_size``, ``patch_size``, ``in_chans``, ``num_classes``,
``global_pool='avg'`` as the official DyT recipe builds its ViTs), keeps timm's own init (its
``model.init: paper``; ``shared`` applies the GPT-2 rule instead), and applies the baseline with
`normfree_bench.convert`; the result is a `TimmView`, which trains, is probed and analyzed as the native
model is. Everything else of the timm model (class token, qkv bias, LayerNorm eps 1e-6, ...) is timm's.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

import timm
from torch import nn

from normfree_bench.config import ModelConfig
from normfree_bench.core.baseline import Baseline
from normfree_bench.core.inits import NETWORK_INITS
from normfree_bench.core.norm_impl import apply_norm_impl
from normfree_bench.core.registry import get_baseline
from normfree_bench.errors import UserError
from normfree_bench.models.transformer import Transformer

if TYPE_CHECKING:
    from normfree_bench.models.convert import TimmView


def build_model(baseline: str | Baseline, config: ModelConfig | None = None, **hparams: Any) -> Transformer | TimmView:
    """The model under a registered baseline (by name, with its hyperparameters) or a baseline instance."""
    config = config or ModelConfig()
    if config.backbone.startswith("timm:"):
        return build_timm(baseline, config, **hparams)
    if isinstance(baseline, str):
        baseline = get_baseline(baseline)(config, **hparams)
    return Transformer(config, baseline)


def build_timm(baseline: str | Baseline, config: ModelConfig, **hparams: Any) -> TimmView:
    """timm's model ``config.backbone`` at the config's size, converted to ``baseline``."""
    # Imported here: `import normfree_bench` (and so every plugin) must not import convert (README).
    from normfree_bench.models.convert import convert

    name = config.backbone.removeprefix("timm:")
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise UserError(f"unknown timm model {name!r} in model.backbone; valid: a name from timm.list_models(), "
                        f"such as vit_tiny_patch16_224" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    try:
        model: nn.Module = timm.create_model(
            name, pretrained=False, img_size=config.image_size, patch_size=config.patch_size,
            in_chans=config.in_chans, num_classes=config.num_classes, embed_dim=config.d_model,
            depth=config.n_layers, num_heads=config.n_heads, mlp_ratio=config.mlp_ratio, global_pool="avg")
    except TypeError as exc:
        raise UserError(f"timm model {name} cannot be built at this size ({exc}); valid: a timm VisionTransformer "
                        "such as vit_tiny_patch16_224") from exc
    cls = type(baseline) if isinstance(baseline, Baseline) else get_baseline(baseline)
    hp = baseline.hp if isinstance(baseline, Baseline) else hparams
    _, report = convert(model, cls, **hp)
    view = report.view
    view.config = view.baseline.config = config
    if config.init == "shared":  # the GPT-2 rule over timm's own init, then the baseline's init again
        NETWORK_INITS["gpt2"](view)
        view.baseline.init_(view)
    apply_norm_impl(view, config.norm_impl)
    return view
