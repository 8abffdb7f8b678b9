"""The baseline plugin API: one class whose hooks default to the standard pre-LN Transformer.

Usage::

    from normfree_bench import Baseline, register_baseline

    @register_baseline
    class MyNorm(Baseline):
        name = "mynorm"
        description = "RMSNorm at every site"
        paper = "https://arxiv.org/abs/1910.07467"

        def norm(self, dim, site, layer_idx, n_layers):
            return torch.nn.RMSNorm(dim)

A baseline overrides only what differs from pre-LN. The model (normfree_bench.model) names no
scheme: every block asks its baseline for the norm at each site (``attn``, ``mlp``, ``final``), the
residual combine of each branch, the MLP activation and the embedding scale, and the baseline then
initialises the built model, chooses its optimizer groups and clips its gradients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from normfree_bench.config import ModelConfig, coerce
from normfree_bench.core.layers import Residual, make_norm
from normfree_bench.errors import UserError

NormSite = tuple[int, str, str, nn.Module]  # (layer_idx, site, qualified name, module)
ResidualSite = tuple[int, str, str, Residual]  # (layer_idx, branch, qualified name, residual)
BranchLinear = tuple[int, str, nn.Linear]  # (layer_idx, role, linear)


@runtime_checkable
class BlockView(Protocol):
    """One block, as a baseline's hooks see it: its norm sites, its residuals and its two branches.

    ``attn`` has Linear ``qkv`` and ``proj``; ``mlp`` has Linear ``fc1`` (or SwiGLU's ``fc1_g`` and
    ``fc1_x``) and ``fc2``. Calling the block maps the residual stream (B, T, d) to the next one.
    """

    layer_idx: int
    norm_attn: nn.Module
    norm_mlp: nn.Module
    res_attn: Residual
    res_mlp: Residual
    attn: nn.Module
    mlp: nn.Module

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ModelView(Protocol):
    """What a baseline's hooks may use of a model: our `Transformer`, or a timm model converted by
    ``normfree_bench.convert`` (its `TimmView`). Nothing else is promised; a hook that reaches for
    another attribute works on one of them only.

    - ``config``, ``baseline``: the model's `ModelConfig` and the baseline it was built under;
    - ``blocks``: the blocks (`BlockView`), in order, with their sites and residuals;
    - ``norm_final``: the final norm site (before the head; after pooling for the ViT);
    - ``head``: the output layer (LM head or classifier);
    - ``embeddings()``: the input embedding modules and parameters (token or patch, positions);
    - ``branch_linears()``: every linear layer inside a residual branch, with its role;
    - ``norm_sites()`` / ``residual_sites()``: every norm site and residual, with its qualified name;
    - ``embed(inputs)``: inputs to the stream the first block sees;
    - the ``nn.Module`` methods a hook needs: ``parameters()``, ``named_parameters()``, ``modules()``,
      ``named_modules()``.
    """

    config: ModelConfig
    baseline: Baseline
    blocks: Sequence[BlockView]
    norm_final: nn.Module
    head: nn.Module

    def embeddings(self) -> list[nn.Module | nn.Parameter]: ...

    def branch_linears(self) -> Iterator[BranchLinear]: ...

    def norm_sites(self) -> Iterator[NormSite]: ...

    def residual_sites(self) -> Iterator[ResidualSite]: ...

    def embed(self, inputs: torch.Tensor) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, nn.Parameter]]: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def named_modules(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, nn.Module]]: ...


class Baseline:
    """A normalization scheme. Subclass it, set the metadata, override hooks, decorate with
    `register_baseline`. One instance is made per model, so a baseline may keep per-model state
    (for example one gain shared by both branches of a layer)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    norm_free: ClassVar[bool] = False  # True: no LayerNorm or RMSNorm may remain in the model
    # "main" baselines run when a sweep names none; "ablation" ones only when named (suite ablation).
    group: ClassVar[str] = "main"
    hparams: ClassVar[dict[str, Any]] = {}  # named hyperparameters and their defaults
    # The type of each hyperparameter whose default does not say it (a None default, a list of choices):
    # e.g. {"alpha_init": float | None, "final": Literal["scale", "layernorm"]}. Others take their
    # default's type: bool, int, float (an int is accepted), str, list or dict.
    hparam_types: ClassVar[dict[str, Any]] = {}
    # True: the embedding scale multiplies the token embedding plus the learned positions (DyT/Derf's
    # GPT-2 code); False: the token embedding only, the positions added after it (fairseq, ReZero's tutorial).
    scale_positions: ClassVar[bool] = True
    # The block placements (model.placement: pre, post, res_post, sandwich) this scheme's norms may take;
    # the first is its own, used when model.placement is unset. A scheme without norms to place keeps pre.
    placements: ClassVar[tuple[str, ...]] = ("pre",)

    def __init__(self, config: ModelConfig, **hparams: Any) -> None:
        self.config = config
        self.hp: dict[str, Any] = {**self.hparams, **type(self).check_hparams(hparams)}

    @classmethod
    def hparam_type(cls, key: str) -> Any:
        """The declared type of hyperparameter ``key``: from `hparam_types`, else from its default."""
        if key in cls.hparam_types:
            return cls.hparam_types[key]
        default = cls.hparams[key]
        for tp in (bool, int, float, str, list, dict):
            if isinstance(default, tp):
                return tp
        return Any

    @classmethod
    def check_hparams(cls, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` checked against the declared hyperparameters: an unknown name, or a value of the
        wrong type, is a one-line `UserError` naming the baseline, the key and what is valid."""
        unknown = sorted(set(values) - set(cls.hparams))
        if unknown:
            valid = ", ".join(sorted(cls.hparams)) or "(none)"
            raise UserError(f"unknown hyperparameter '{unknown[0]}' for baseline '{cls.name}'; valid: {valid}")
        return {k: coerce(v, cls.hparam_type(k), f"hparams.{cls.name}.{k}") for k, v in values.items()}

    @classmethod
    def check_placement(cls, placement: str | None) -> str:
        """The placement a model of this scheme takes under ``model.placement: placement`` (None: the
        scheme's own); one it does not support is a one-line `UserError` naming the valid ones."""
        if placement is None:
            return cls.placements[0]
        if placement not in cls.placements:
            raise UserError(f"baseline '{cls.name}' does not support model.placement '{placement}'; valid for it: "
                            + ", ".join(cls.placements))
        return placement

    # ---- construction hooks, called by the model while it is built ---------------------------
    def norm(self, dim: int, site: str, layer_idx: int, n_layers: int) -> nn.Module:
        """The module at norm site ``site``: ``attn`` or ``mlp`` (the branch's norm, wherever ``model.placement``
        puts it), ``attn_out`` or ``mlp_out`` (the second norm of ``sandwich``, on the branch's output), or
        ``final`` (before the head; layer_idx == n_layers; absent under ``post``)."""
        return make_norm("layernorm", dim, bias=self.config.bias)

    def residual(self, dim: int, branch: str, layer_idx: int, n_layers: int) -> Residual:
        """The residual combine around branch ``branch`` (attn or mlp) of block ``layer_idx``."""
        return Residual()

    def activation(self) -> nn.Module:
        """The MLP's activation: GELU for the gelu MLP, SiLU for the SwiGLU gate."""
        return nn.SiLU() if self.config.mlp == "swiglu" else nn.GELU()

    def qk_norm(self, head_dim: int, which: str, layer_idx: int, n_layers: int) -> nn.Module:
        """The norm applied per head to queries (``which == "q"``) or keys (``"k"``) before the dot
        product; by default ``model.qk_norm`` (none, layernorm or rmsnorm over head_dim), so that any
        baseline can run the qk-layernorm ablation of Wortsman et al. 2023."""
        return make_norm(self.config.qk_norm, head_dim, bias=self.config.bias)

    def embedding_scale(self, dim: int) -> nn.Module:
        """Applied to the token (+ position) embedding before the first block."""
        return nn.Identity()

    # ---- hooks called on the built model ------------------------------------------------------
    def network_init(self) -> str:
        """Under ``model.init: paper``, the rule (normfree_bench.core.inits) that initialises the whole
        network before `init_`, as the scheme's paper and official code train: by default the reference
        recipe of the model being built, ``timm`` for the ViT task, ``llama`` for the LLaMA flavour
        (SwiGLU), ``gpt2`` (nanoGPT) otherwise. ``model.init: shared`` uses ``gpt2`` for every scheme."""
        if self.config.task == "vit":
            return "timm"
        return "llama" if self.config.mlp == "swiglu" else "gpt2"

    def init_(self, model: ModelView) -> None:
        """The scheme's own init, after the network's (`network_init`, or the shared rule); runs under no_grad."""

    def param_groups(self, model: ModelView, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups. Default (timm rule): no weight decay on 1-D parameters and biases.
        A group may carry ``lr_scale``, a multiplier on the scheduled LR."""
        return param_groups_weight_decay(model, weight_decay=weight_decay)

    def clip_gradients(self, model: ModelView, max_norm: float) -> torch.Tensor:
        """Clip gradients and return the global gradient norm before clipping."""
        params = [p for p in model.parameters() if p.grad is not None]
        if max_norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        return torch.nn.utils.get_total_norm([p.grad for p in params])

    def check_init(self, model: ModelView, batch: torch.Tensor) -> list[str]:
        """The scheme's invariants at init; return one message per violated invariant."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, hparams={self.hp})"
