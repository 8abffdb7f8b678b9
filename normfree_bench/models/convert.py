"""Apply a registered baseline to a third-party timm ViT, in place, and report exactly what changed.

Usage: ``model, report = convert(timm.create_model("vit_small_patch16_224"), "dyt"); print(report)``

``convert(model, baseline, **hparams)`` takes a timm model whose ``blocks`` are timm ``Block``s (a
``VisionTransformer`` and its subclasses) and asks the baseline for the same things our own
Transformer does (normfree_bench.models.transformer):

- the norm at every site: ``blocks.i.norm1`` (site ``attn``), ``blocks.i.norm2`` (``mlp``), and the
  final ``norm`` / ``fc_norm`` (``final``, layer_idx == n_layers), whichever is not ``nn.Identity``;
  any norm class counts (LayerNorm, timm RmsNorm, nn.RMSNorm, GroupNorm, ...). When the baseline
  asks for the kind of norm a site already holds (``layernorm`` on a LayerNorm ViT), the original
  module is kept, with its eps and trained weights, so the converted model computes the same thing;
- the residual combine of each branch: if it is not the plain ``x + y``, the block becomes a
  `ConvertedBlock` (a subclass of timm's ``Block``, so state-dict keys stay ``blocks.i.*``) computing
  ``x = res_attn.combine(x, drop_path1(ls1(attn(res_attn.branch_input(norm1(x))))))`` and the same
  for the MLP, with ``res_attn`` / ``res_mlp`` registered as submodules;
- the MLP activation (``mlp.act``), when the baseline overrides ``activation``;
- the embedding scale, placed at ``norm_pre`` (after the position embedding, before the blocks),
  which must be a free ``nn.Identity`` slot;
- then the baseline's ``init_`` runs on a `TimmView`: the documented `ModelView` of the plugin API
  (normfree_bench.core.baseline) over the timm model. Weights the baseline's init does not reset keep
  their values.

Anything that cannot be converted faithfully is refused with a one-line `UserError` naming the
module: a block that is not exactly timm's ``Block``, a norm outside the sites (QK-norm, ``norm_pre``,
``patch_embed.norm``, attention pooling, ...), an activation other than the one the baseline's
activation wraps, a baseline whose ``init_`` needs something the view lacks. The whole model is
checked before anything changes, and a failure after that (in ``init_`` or the final check) rolls
every change back, so a refused model is left exactly as it was. ``report.baseline`` and
``report.view`` give the baseline's ``param_groups``, ``clip_gradients`` and ``check_init`` for
training the converted model: ``report.baseline.clip_gradients(report.view, 1.0)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import timm.layers.norm as timm_norm
import timm.layers.norm_act as timm_norm_act
import torch
from timm.layers import GluMlp, Mlp, SwiGLU
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn.utils import parametrize

from normfree_bench.config import ModelConfig
from normfree_bench.core.baseline import Baseline, BranchLinear, NormSite, ResidualSite
from normfree_bench.core.layers import Residual
from normfree_bench.core.registry import get_baseline
from normfree_bench.errors import UserError
from normfree_bench.models.transformer import block_branch_linears

__all__ = ["ConversionReport", "ConvertedBlock", "TimmView", "convert"]


def _classes_of(module: Any) -> tuple[type, ...]:
    return tuple(obj for obj in vars(module).values()
                 if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__)


# Layers that normalise with statistics of their input: torch's and every class of timm's norm modules.
_STAT_NORMS: tuple[type, ...] = (
    nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.CrossMapLRN2d,
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    *_classes_of(timm_norm), *_classes_of(timm_norm_act),
)
# Same-kind norms: when the baseline asks for nn.LayerNorm (nn.RMSNorm) at a site holding one of
# these, the original module is kept with its eps and weights.
_SAME_KIND: dict[type, tuple[type, ...]] = {
    nn.LayerNorm: (nn.LayerNorm, timm_norm.LayerNorm, timm_norm.LayerNormFp32),
    nn.RMSNorm: (nn.RMSNorm, timm_norm.RmsNorm, timm_norm.RmsNormFp32),
}
_MLPS = (Mlp, GluMlp, SwiGLU)
_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


def _is_stat_norm(module: nn.Module) -> bool:
    return isinstance(module, _STAT_NORMS)


def _looks_like_norm(module: nn.Module) -> bool:
    """A statistics norm, or any other class named like one (refused where it is not a site)."""
    return not isinstance(module, nn.Identity) and (_is_stat_norm(module) or "norm" in type(module).__name__.lower())


def _name(module: nn.Module) -> str:
    """A short class description for the report: ``Sequential(Shift, GELU, Shift)`` for sequentials."""
    if type(module) is nn.Sequential:
        return f"Sequential({', '.join(type(child).__name__ for child in module)})"
    return type(module).__name__


class ConvertedBlock(Block):
    """timm's pre-norm ``Block`` with the baseline's residual combines around both branches."""

    res_attn: Residual
    res_mlp: Residual

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if attn_mask is not None or is_causal:  # timm < 1.0.20 has no is_causal: pass it only when used
            kwargs = {"attn_mask": attn_mask, "is_causal": is_causal} if is_causal else {"attn_mask": attn_mask}
        res = self.res_attn
        x = res.combine(x, self.drop_path1(self.ls1(self.attn(res.branch_input(self.norm1(x)), **kwargs))))
        res = self.res_mlp
        x = res.combine(x, self.drop_path2(self.ls2(self.mlp(res.branch_input(self.norm2(x))))))
        return x


class _BlockView:
    """One converted timm block as a `BlockView`: ``norm_attn`` / ``norm_mlp`` are timm's ``norm1`` /
    ``norm2``, ``res_attn`` / ``res_mlp`` the baseline's residuals (plain ones where the block kept
    timm's ``x + y``)."""

    def __init__(self, block: Block, layer_idx: int, res_attn: Residual, res_mlp: Residual) -> None:
        self.block, self.layer_idx, self.res_attn, self.res_mlp = block, layer_idx, res_attn, res_mlp

    @property
    def attn(self) -> nn.Module:
        return self.block.attn

    @property
    def mlp(self) -> nn.Module:
        return self.block.mlp

    @property
    def norm_attn(self) -> nn.Module:
        return self.block.norm1

    @property
    def norm_mlp(self) -> nn.Module:
        return self.block.norm2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class TimmView(nn.Module):
    """A converted timm model as a `ModelView`, the interface every baseline hook is written against, and
    an ``nn.Module`` holding it (as ``self.model``), so that it trains as our Transformer does.

    Qualified names (``norm_sites``, ``residual_sites``, ``named_parameters``) start with ``model.``,
    the timm model's own module paths after it. Nothing else of the timm model is exposed, so a hook
    written against the view works on our Transformer and on timm models alike.
    """

    def __init__(self, model: nn.Module, config: ModelConfig, baseline: Baseline, blocks: list[_BlockView],
                 final_site: str) -> None:
        super().__init__()
        self.model = model
        self.config, self.baseline = config, baseline
        self.blocks, self.final_site = blocks, final_site

    @property
    def norm_final(self) -> nn.Module:
        return getattr(self.model, self.final_site)

    @property
    def head(self) -> nn.Module:
        return self.model.head

    def branch_linears(self) -> Iterator[BranchLinear]:
        """(layer_idx, role, linear): ``qkv`` (attn.qkv), ``attn_out`` (attn.proj), ``mlp_in`` (fc1,
        or SwiGLU's fc1_g and fc1_x), ``mlp_out`` (fc2), as `Transformer.branch_linears`."""
        return block_branch_linears(self.blocks)

    def norm_sites(self) -> Iterator[NormSite]:
        for b in self.blocks:
            yield b.layer_idx, "attn", f"model.blocks.{b.layer_idx}.norm1", b.norm_attn
            yield b.layer_idx, "mlp", f"model.blocks.{b.layer_idx}.norm2", b.norm_mlp
        yield len(self.blocks), "final", f"model.{self.final_site}", self.norm_final

    def residual_sites(self) -> Iterator[ResidualSite]:
        for b in self.blocks:
            yield b.layer_idx, "attn", f"model.blocks.{b.layer_idx}.res_attn", b.res_attn
            yield b.layer_idx, "mlp", f"model.blocks.{b.layer_idx}.res_mlp", b.res_mlp

    def embeddings(self) -> list[nn.Module | nn.Parameter]:
        """The patch projection, the learned positions and the class / register / distillation tokens."""
        out: list[nn.Module | nn.Parameter] = []
        patch_embed = getattr(self.model, "patch_embed", None)
        if patch_embed is not None and hasattr(patch_embed, "proj"):
            out.append(patch_embed.proj)
        for name in ("pos_embed", "cls_token", "reg_token", "dist_token"):
            param = getattr(self.model, name, None)
            if isinstance(param, nn.Parameter):
                out.append(param)
        return out

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images to the stream the first block sees (patches, tokens, positions, ``norm_pre``)."""
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(self.scaled(images)))))

    def scaled(self, images: torch.Tensor) -> torch.Tensor:
        """The pixels times ``model.input_scale`` (the data rescaling of ``analyze --invariance``)."""
        c = self.config.input_scale
        return images * c if c != 1 else images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.scaled(images))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass
class ConversionReport:
    """What `convert` changed. ``replaced`` counts by (old class, site kind, new class), e.g.
    ``{"LayerNorm → PointwiseNorm": 24, "LayerNorm (fc_norm) → PointwiseNorm": 1}``; residuals count
    branches (two per block). ``changes`` lists (module path, old, new) one by one."""

    baseline: Baseline
    view: TimmView = field(repr=False)
    replaced: dict[str, int] = field(default_factory=dict)
    changes: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, label: str, path: str, old: str, new: str) -> None:
        self.replaced[label] = self.replaced.get(label, 0) + 1
        self.changes.append((path, old, new))

    def __str__(self) -> str:
        return ", ".join(f"{n} {label}" for label, n in self.replaced.items()) or "nothing changed"


@dataclass
class _Swap:
    """One module replacement: ``parent.attr`` from ``old`` to ``new`` (``new is old`` when kept)."""

    parent: nn.Module
    attr: str
    path: str
    old: nn.Module
    new: nn.Module
    label: str
    kind: str  # report order: norm, final, act, embed


class _Conversion:
    """Validate, plan, apply and (on failure) undo one conversion."""

    def __init__(self, model: Any, baseline: str | type[Baseline], hparams: dict[str, Any]) -> None:
        self.model = model
        self.what = type(model).__name__
        self.blocks = self._validate_blocks()
        self.final_sites = self._final_sites()
        self._validate_no_stray_norms()
        self.config = self._config()
        self.baseline = self._make_baseline(baseline, hparams)
        self.bname = self.baseline.name or type(self.baseline).__name__
        self.swaps: list[_Swap] = []
        self.residuals: list[tuple[Block, Residual, Residual]] = []
        self._plan()

    # ---- validation (reads only) ------------------------------------------------------------
    def _validate_blocks(self) -> list[tuple[str, Block]]:
        model = self.model
        if not isinstance(model, nn.Module):
            raise UserError(f"cannot convert a {self.what}: convert() takes a timm VisionTransformer (an nn.Module)")
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
            raise UserError(f"cannot convert {self.what}: not a timm model made of timm Blocks (no 'blocks' list); "
                            "convert() takes a timm VisionTransformer")
        for path, module in model.named_modules():
            if isinstance(module, ConvertedBlock) or type(module).__module__.startswith("normfree_bench"):
                raise UserError(f"cannot convert {path or self.what} ({type(module).__name__}): the model was already "
                                "converted; convert a fresh timm model")
        out = []
        dim = None
        for name, block in blocks.named_children():
            path = f"blocks.{name}"
            if type(block) is not Block:
                raise UserError(f"cannot convert {path} ({type(block).__name__}): only timm Block is supported")
            missing = [part for part in _BLOCK_PARTS if not isinstance(getattr(block, part, None), nn.Module)]
            if missing:
                raise UserError(f"cannot convert {path}: timm Block without {missing[0]}")
            attn, mlp = block.attn, block.mlp
            if not (isinstance(getattr(attn, "qkv", None), nn.Linear) and isinstance(getattr(attn, "proj", None),
                                                                                      nn.Linear)):
                raise UserError(f"cannot convert {path}.attn ({type(attn).__name__}): needs Linear qkv and proj")
            if type(mlp) not in _MLPS:
                raise UserError(f"cannot convert {path}.mlp ({type(mlp).__name__}): only timm Mlp, GluMlp and "
                                "SwiGLU are supported")
            linears = [getattr(mlp, n) for n in ("fc1", "fc1_g", "fc1_x", "fc2") if hasattr(mlp, n)]
            if not all(isinstance(lin, nn.Linear) for lin in linears):
                raise UserError(f"cannot convert {path}.mlp: its layers are not Linear (use_conv is not supported)")
            if dim is not None and attn.qkv.in_features != dim:
                raise UserError(f"cannot convert {path}: width {attn.qkv.in_features} differs from blocks.0 ({dim})")
            dim = attn.qkv.in_features
            out.append((path, block))
        return out

    def _final_sites(self) -> list[str]:
        present = [name for name in ("norm", "fc_norm") if isinstance(getattr(self.model, name, None), nn.Module)]
        sites = [name for name in present if not isinstance(getattr(self.model, name), nn.Identity)]
        if not sites and present:  # no final norm today: the site is where this model's pooling puts it
            pooled = getattr(self.model, "global_pool", "") in ("avg", "avgmax", "max")
            sites = ["fc_norm" if pooled and "fc_norm" in present else present[0]]
        if not sites:
            raise UserError(f"cannot convert {self.what}: it has no final norm site (norm or fc_norm)")
        return sites

    def _validate_no_stray_norms(self) -> None:
        sites = {f"{path}.{attr}" for path, _ in self.blocks for attr in ("norm1", "norm2")} | set(self.final_sites)
        for path, module in self.model.named_modules():
            if not path or any(path == s or path.startswith(s + ".") for s in sites) or not _looks_like_norm(module):
                continue
            block = next((b for b, _ in self.blocks if path.startswith(b + ".")), None)
            owner, inner = (block, path[len(block) + 1:]) if block else (self.what, path)
            raise UserError(f"cannot convert {owner}: it has a norm at {inner} ({type(module).__name__}) "
                            "that is not a norm site")

    def _config(self) -> ModelConfig:
        block = self.blocks[0][1]
        d = block.attn.qkv.in_features
        patch_embed = getattr(self.model, "patch_embed", None)
        patch = tuple(getattr(patch_embed, "patch_size", None) or (1,))[0]
        grid = tuple(getattr(patch_embed, "grid_size", None) or (1,))[0]
        proj = getattr(patch_embed, "proj", None)
        norm1 = block.norm1
        bias = getattr(norm1, "bias", None) is not None if _is_stat_norm(norm1) else block.mlp.fc2.bias is not None
        act = block.mlp.act
        swiglu = isinstance(block.mlp, SwiGLU) or (isinstance(block.mlp, GluMlp) and isinstance(act, nn.SiLU))
        heads = int(getattr(block.attn, "num_heads", 1))  # informative only: no hook reads it
        try:
            return ModelConfig(
                task="vit", d_model=d, n_layers=len(self.blocks), n_heads=heads if d % heads == 0 else 1,
                image_size=patch * grid, patch_size=patch,
                num_classes=max(1, int(getattr(self.model, "num_classes", 1))),
                in_chans=int(getattr(proj, "in_channels", 3)), mlp="swiglu" if swiglu else "gelu",
                mlp_ratio=block.mlp.fc2.in_features / d, bias=bias,
                positions="learned" if isinstance(getattr(self.model, "pos_embed", None), nn.Parameter) else "none")
        except UserError as exc:
            raise UserError(f"cannot convert {self.what}: {exc}") from exc

    def _make_baseline(self, baseline: str | type[Baseline], hparams: dict[str, Any]) -> Baseline:
        if isinstance(baseline, str):
            cls = get_baseline(baseline)
        elif isinstance(baseline, type) and issubclass(baseline, Baseline):
            cls = baseline
        else:
            raise UserError(f"baseline must be a registered name or a Baseline subclass, got {baseline!r}")
        if "pre" not in cls.placements:
            raise UserError(f"baseline '{cls.name}' places its norms {cls.placements[0]}, and a timm ViT's blocks are "
                            "pre-norm; valid: a baseline with the pre placement, or model.backbone: native")
        return cls(self.config, **hparams)

    # ---- the plan: every new module, built before anything changes ---------------------------
    def _norm_swap(self, parent: nn.Module, attr: str, path: str, label_site: str, new: Any) -> None:
        old = getattr(parent, attr)
        if not isinstance(new, nn.Module):
            raise UserError(f"baseline '{self.bname}': norm() returned {type(new).__name__}, not an nn.Module")
        kept = type(new) in _SAME_KIND and type(old) in _SAME_KIND[type(new)] and all(
            getattr(old, a, None) == getattr(new, a, None) for a in ("normalized_shape", "elementwise_affine")
        ) and (getattr(old, "bias", None) is None) == (getattr(new, "bias", None) is None)
        if kept:
            new = old
        old_name, new_name = _name(old), _name(new)
        if isinstance(old, nn.Identity) and isinstance(new, nn.Identity):
            return
        label = f"{old_name}{f' ({label_site})' if label_site else ''} → {new_name}{' (kept)' if kept else ''}"
        self.swaps.append(_Swap(parent, attr, path, old, new, label, "final" if label_site else "norm"))

    def _plan(self) -> None:
        bl, config, model = self.baseline, self.config, self.model
        d, n = config.d_model, config.n_layers
        default_act = Baseline.activation(bl)
        overrides_act = type(bl).activation is not Baseline.activation
        scale = bl.embedding_scale(d)
        if not isinstance(scale, nn.Identity):
            norm_pre = getattr(model, "norm_pre", None)
            if not isinstance(norm_pre, nn.Identity):
                found = "no norm_pre" if norm_pre is None else f"norm_pre is {type(norm_pre).__name__}"
                raise UserError(f"cannot convert {self.what} to '{self.bname}': the baseline scales the embedding, "
                                f"but {found} (needs a free nn.Identity slot)")
            self.swaps.append(_Swap(model, "norm_pre", "norm_pre", norm_pre, scale,
                                    f"embedding scale (norm_pre) → {_name(scale)}", "embed"))
        overrides_init = type(bl).init_ is not Baseline.init_
        for i, (path, block) in enumerate(self.blocks):
            if overrides_init and getattr(block.attn, "gate", None) is not None:
                raise UserError(f"cannot convert {path}.attn: gated attention (attn.gate) is a branch linear that "
                                f"baseline '{self.bname}''s init_ does not know")
            self._norm_swap(block, "norm1", f"{path}.norm1", "", bl.norm(d, "attn", i, n))
            res_attn = bl.residual(d, "attn", i, n)
            self._norm_swap(block, "norm2", f"{path}.norm2", "", bl.norm(d, "mlp", i, n))
            res_mlp = bl.residual(d, "mlp", i, n)
            for res in (res_attn, res_mlp):
                if not isinstance(res, Residual):
                    raise UserError(f"baseline '{self.bname}': residual() returned {type(res).__name__}, "
                                    "not a normfree_bench.layers.Residual")
            self.residuals.append((block, res_attn, res_mlp))
            if overrides_act:
                act = block.mlp.act
                if not _same_activation(act, default_act):
                    raise UserError(f"cannot convert {path}.mlp.act ({act!r}): baseline '{self.bname}' replaces the "
                                    f"activation with one built around {default_act!r}")
                new_act = bl.activation()
                self.swaps.append(_Swap(block.mlp, "act", f"{path}.mlp.act", act, new_act,
                                        f"{_name(act)} (mlp.act) → {_name(new_act)}", "act"))
        for attr in self.final_sites:
            self._norm_swap(model, attr, attr, attr, bl.norm(d, "final", n, n))

    # ---- apply, init, verify; undo on any failure ----------------------------------------------
    def run(self) -> tuple[nn.Module, ConversionReport]:
        model = self.model
        ref = next((p for p in model.parameters() if p.is_floating_point()), None)
        new_modules = [s.new for s in self.swaps if s.new is not s.old]
        new_modules += [r for _, ra, rm in self.residuals for r in (ra, rm)]
        for module in new_modules:
            if ref is not None:
                module.to(device=ref.device, dtype=ref.dtype)
            module.train(model.training)
        overrides_init = type(self.baseline).init_ is not Baseline.init_
        saved = [(t, t.detach().to("cpu", copy=True)) for t in model.state_dict(keep_vars=True).values()
                 ] if overrides_init else []
        parametrized = {id(m) for m in model.modules() if parametrize.is_parametrized(m)}
        order = {id(m): list(m._parameters) for m in model.modules()} if overrides_init else {}
        wrapped: list[Block] = []
        try:
            for s in self.swaps:
                setattr(s.parent, s.attr, s.new)
            views = []
            for i, (block, res_attn, res_mlp) in enumerate(self.residuals):
                if type(res_attn) is not Residual or type(res_mlp) is not Residual:
                    block.__class__ = ConvertedBlock
                    wrapped.append(block)
                    block.res_attn, block.res_mlp = res_attn, res_mlp
                views.append(_BlockView(block, i, res_attn, res_mlp))
            view = TimmView(model, self.config, self.baseline, views, self.final_sites[-1])
            if overrides_init:
                with torch.no_grad():
                    try:
                        self.baseline.init_(view)
                    except AttributeError as exc:
                        raise UserError(f"cannot convert {self.what} to baseline '{self.bname}': its init_ needs an "
                                        f"attribute the converted model lacks ({exc})") from exc
            self._verify()
        except BaseException:
            self._undo(wrapped, saved, parametrized, order)
            raise
        report = ConversionReport(self.baseline, view)
        for kind in ("norm", "final", "residual", "act", "embed"):
            for s in self.swaps:
                if s.kind == kind:
                    report.add(s.label, s.path, _name(s.old), _name(s.new))
            if kind != "residual":
                continue
            for (path, block), (_, res_attn, res_mlp) in zip(self.blocks, self.residuals):
                if block in wrapped:
                    for attr, res in (("res_attn", res_attn), ("res_mlp", res_mlp)):
                        report.add(f"residuals → {_name(res)}", f"{path}.{attr}", "Residual", _name(res))
        return model, report

    def _verify(self) -> None:
        for s in self.swaps:
            if getattr(s.parent, s.attr) is not s.new:
                raise UserError(f"cannot convert {self.what}: {s.path} changed during baseline '{self.bname}''s init_")
        if self.baseline.norm_free:
            for path, module in self.model.named_modules():
                if _is_stat_norm(module):
                    raise UserError(f"cannot convert {self.what}: baseline '{self.bname}' claims to be norm-free but "
                                    f"{path} is {type(module).__name__} after conversion")

    def _undo(self, wrapped: list[Block], saved: list[tuple[torch.Tensor, torch.Tensor]],
              parametrized: set[int], order: dict[int, list[str]]) -> None:
        for module in list(self.model.modules()):
            if parametrize.is_parametrized(module) and id(module) not in parametrized:
                for name in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=False)
                keys = order.get(id(module), [])  # removal re-registers the weight last: restore the order
                params = module._parameters
                ordered = [(k, params[k]) for k in keys if k in params]
                module._parameters = type(params)(ordered + [(k, v) for k, v in params.items() if k not in keys])
        for block in wrapped:
            del block.res_attn, block.res_mlp
            block.__class__ = Block
        for s in reversed(self.swaps):
            setattr(s.parent, s.attr, s.old)
        with torch.no_grad():
            for tensor, copy in saved:
                tensor.copy_(copy)


def _same_activation(act: nn.Module, default: nn.Module) -> bool:
    """The model's activation is the function the baseline's default activation computes."""
    kind = type(default).__name__
    if kind == "GELU":
        return type(act).__name__ == "GELU" and getattr(act, "approximate", "none") == default.approximate
    if kind == "SiLU":
        return type(act).__name__ in ("SiLU", "Swish")
    return type(act) is type(default) and act.extra_repr() == default.extra_repr()


def convert(model: nn.Module, baseline: str | type[Baseline], **hparams: Any) -> tuple[nn.Module, ConversionReport]:
    """Apply ``baseline`` (a registered name or a `Baseline` subclass) to a timm ViT in place.

    Returns the same model and a `ConversionReport`; raises `UserError`, leaving the model unchanged,
    for anything that cannot be converted faithfully.
    """
    return _Conversion(model, baseline, hparams).run()
