"""The configuration's schema: one frozen dataclass per section, each validating its own values.

Usage: ``ModelConfig(d_model=64)``; ``RunConfig().config_hash()``  (files are read by normfree_bench.config.loading)

Out-of-range values raise `UserError` naming the key and what is valid, so the CLI can exit with
code 2 and one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from normfree_bench.errors import UserError

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2-like: GELU MLP, learned absolute positions, linear biases.
    "gpt2": {"mlp": "gelu", "positions": "learned", "bias": True},
    # The DyT paper's LM recipe (LLaMA): SwiGLU, rotary positions, no biases.
    "llama": {"mlp": "swiglu", "positions": "rope", "bias": False},
}


# How the norm layers run (normfree_bench.core.norm_impl): the eager modules, torch.compile'd, or fused autograd
# Functions (Triton kernels on CUDA). The same parameters and, within rounding, the same function.
NORM_IMPLS = ("eager", "compiled", "fused")
# Where each block's norm sits (model.placement; README "Norm placement"): pre x + F(N(x)), post N(x + F(x)),
# res_post x + N(F(x)) (Swin-V2), sandwich x + N_out(F(N_in(x))) (Sandwich-LN, Peri-LN).
PLACEMENTS = ("pre", "post", "res_post", "sandwich")
SEED_MAX = 2**32 - 1  # Lightning's seed_everything bound (numpy's too)
PRECISIONS = ("auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "64-true")
STRATEGIES = ("auto", "ddp")


def check_finite(where: str, *values: tuple[str, float]) -> None:
    """Refuse NaN and infinities: ``check_finite("train", ("lr", lr), ("beta1", beta1))``."""
    for name, value in values:
        if value is not None and not math.isfinite(value):
            raise UserError(f"{where}.{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The one Transformer's shape and flavour; identical for every baseline in a comparison."""

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    context_length: int = 128
    mlp: Literal["gelu", "swiglu"] = "gelu"
    mlp_ratio: float = 4.0
    positions: Literal["learned", "rope", "none"] = "learned"
    bias: bool = True
    qk_norm: Literal["none", "layernorm", "rmsnorm"] = "none"  # per-head norm of q and k (any baseline)
    task: Literal["lm", "vit"] = "lm"
    # The network's init: "paper" (each baseline's paper and official code, Baseline.network_init) or
    # "shared" (GPT-2's rule for every baseline, so that only the scheme differs). README: "Init".
    init: Literal["paper", "shared"] = "paper"
    # "native" (this package's Transformer) or "timm:<model name>" (timm's own model, e.g.
    # timm:vit_tiny_patch16_224, built at this config's size and converted to the baseline; ViT only).
    backbone: str = "native"
    # How the norm sites run: eager, compiled or fused (NORM_IMPLS; README "Speed"). Not a scheme choice.
    norm_impl: Literal["eager", "compiled", "fused"] = "eager"
    # Where each block's norms sit (PLACEMENTS); None: the baseline's own (Baseline.placements[0], pre for
    # all but the post-LN schemes). A baseline declares the placements it supports.
    placement: Literal["pre", "post", "res_post", "sandwich"] | None = None
    # A fixed factor c on the model's input: the pixels (ViT) or the token embedding's output (LM); the
    # "dataset rescaling" of ``analyze --invariance`` retrains with c != 1.
    input_scale: float = 1.0
    # ViT head only (task: vit).
    image_size: int = 8
    patch_size: int = 2
    in_chans: int = 1
    num_classes: int = 10

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "context_length", "image_size",
                     "patch_size", "in_chans", "num_classes"):
            if getattr(self, name) < 1:
                raise UserError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise UserError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise UserError("model.positions 'rope' needs an even head size (d_model / n_heads)")
        if self.norm_impl not in NORM_IMPLS:
            raise UserError(unknown_choice(self.norm_impl, NORM_IMPLS, "model.norm_impl"))
        check_finite("model", ("mlp_ratio", self.mlp_ratio), ("input_scale", self.input_scale))
        if self.placement is not None and self.placement not in PLACEMENTS:
            raise UserError(unknown_choice(self.placement, PLACEMENTS, "model.placement"))
        if self.input_scale <= 0:
            raise UserError(f"model.input_scale must be > 0, got {self.input_scale:g}; valid: a positive factor "
                            "such as 0.1 or 10")
        if self.placement is not None and self.backbone != "native":
            raise UserError(f"model.placement applies to the native Transformer; model.backbone {self.backbone} keeps "
                            "timm's pre-norm blocks (leave model.placement out)")
        if self.hidden_dim < 1:
            raise UserError(f"model.mlp_ratio ({self.mlp_ratio:g}) x d_model ({self.d_model}) leaves an MLP of width "
                            f"{self.hidden_dim}; valid: mlp_ratio >= {1 / self.d_model:.3g}")
        if self.task == "vit" and self.image_size % self.patch_size:
            raise UserError("model.image_size must be divisible by model.patch_size")
        if self.backbone != "native" and not (self.backbone.startswith("timm:") and len(self.backbone) > 5):
            raise UserError(f"invalid model.backbone {self.backbone!r}; valid: native, or timm:<model name> such as "
                            "timm:vit_tiny_patch16_224")
        if self.backbone != "native" and self.task != "vit":
            raise UserError(f"model.backbone {self.backbone} is a timm vision model; valid with task: vit only")

    @classmethod
    def from_preset(cls, preset: str = "gpt2", **overrides: Any) -> ModelConfig:
        """``ModelConfig.from_preset("llama", d_model=128)``: a preset's flavour plus overrides."""
        if preset not in MODEL_PRESETS:
            raise UserError(unknown_choice(preset, MODEL_PRESETS, "model preset"))
        return cls(**{**MODEL_PRESETS[preset], **overrides})

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden_dim(self) -> int:
        return int(self.mlp_ratio * self.d_model)

    @property
    def initial_loss(self) -> float:
        """l0: the loss of a uniform guess, ln(vocab) for the LM and ln(classes) for the ViT."""
        return math.log(self.num_classes if self.task == "vit" else self.vocab_size)

    @property
    def n_tokens(self) -> int:
        """Sequence length the blocks see: the context for the LM, the patch count for the ViT."""
        if self.task == "vit":
            return (self.image_size // self.patch_size) ** 2
        return self.context_length


MAX_TOKEN_VOCAB = 65536  # token ids are stored as uint16 (nanoGPT's token files)


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from and how it is batched."""

    corpus: str = "stdlib"  # LM: "stdlib" (the running Python's standard library) or a local file/folder
    dataset: str = "digits"  # ViT: digits (bundled with scikit-learn), cifar10 or imagefolder
    root: str = ""  # ViT: where cifar10 / imagefolder data lie
    download: bool = False  # ViT: allow torchvision to download CIFAR-10 into root
    batch_size: int = 16
    val_windows: int = 64  # fixed, seeded validation windows
    val_seed: int = 1234
    val_fraction: float = 0.1  # share of files held out for validation
    vocab_size: int | None = None  # token files (a folder with train.bin, val.bin): their vocabulary; None: bytes
    tokenizer: str = "bytes"  # text corpora: bytes, bpe:<vocab> (trained on the train split), or a tokenizer.json
    text_field: str | None = None  # hf:<saved dataset> corpora: the text column (None: "text")

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.val_windows < 1:
            raise UserError(f"data.val_windows must be >= 1, got {self.val_windows}")
        check_finite("data", ("val_fraction", self.val_fraction))
        if not 0 < self.val_fraction < 1:
            raise UserError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.corpus:
            raise UserError("data.corpus is empty; valid: 'stdlib' or a path to a text file or folder")
        tokenizer_spec(self.tokenizer)
        if self.text_field is not None and not self.corpus.startswith("hf:"):
            raise UserError(f"data.text_field applies to Hugging Face datasets (data.corpus: hf:<folder>), and corpus "
                            f"{self.corpus!r} is not one; leave data.text_field out")
        if self.text_field == "":
            raise UserError("data.text_field is empty; valid: the name of a string column of the dataset")
        if self.vocab_size is not None and not 2 <= self.vocab_size <= MAX_TOKEN_VOCAB:
            raise UserError(f"data.vocab_size must be in [2, {MAX_TOKEN_VOCAB}] (uint16 token ids), got "
                            f"{self.vocab_size}")


def tokenizer_spec(spec: str) -> tuple[str, Any]:
    """``data.tokenizer`` parsed: ``("bytes", 256)``, ``("bpe", vocab)`` or ``("file", path)``; a one-line
    `UserError` naming what is valid otherwise."""
    if spec == "bytes":
        return "bytes", 256
    if spec.startswith("bpe:"):
        digits = spec[4:]
        vocab = int(digits) if digits.isdigit() else -1
        if not 257 <= vocab <= MAX_TOKEN_VOCAB:
            raise UserError(f"data.tokenizer {spec!r}: the BPE vocabulary must be an integer in "
                            f"[257, {MAX_TOKEN_VOCAB}] (uint16 ids); valid: bytes, bpe:<vocab size>, or a path to a "
                            "tokenizer.json")
        return "bpe", vocab
    if spec.endswith(".json"):
        return "file", Path(spec).expanduser()
    raise UserError(f"unknown data.tokenizer {spec!r}; valid: bytes, bpe:<vocab size> (e.g. bpe:8192), or a path "
                    "to a tokenizer.json")


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule and loop settings shared by every baseline."""

    steps: int = 300
    lr: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    z_loss: float = 0.0  # PaLM's auxiliary z_loss * log(Z)^2 on the output logits; 1e-4 in the paper
    diagnostics: bool = True  # numerical diagnostics at eval steps (normfree_bench.diagnostics)
    eval_interval: int = 50
    log_interval: int = 10  # train-loss points kept for the curves
    seed: int = 0
    precision: str = "auto"  # auto: bf16-mixed on CUDA, 32-true on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # torch.compile the model for the training steps (evaluation stays eager); None: on CUDA, not on CPU.
    compile: bool | None = None
    devices: int = 1  # data-parallel processes per trial (with strategy ddp): GPUs on CUDA, gloo processes on CPU
    strategy: Literal["auto", "ddp"] = "auto"  # ddp: Lightning's DistributedDataParallel over `devices`

    def __post_init__(self) -> None:
        check_finite("train", ("lr", self.lr), ("min_lr_ratio", self.min_lr_ratio),
                     ("weight_decay", self.weight_decay), ("beta1", self.beta1), ("beta2", self.beta2),
                     ("grad_clip", self.grad_clip), ("z_loss", self.z_loss))
        if self.steps < 1:
            raise UserError(f"train.steps must be >= 1, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"train.lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise UserError(f"train.warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        if self.eval_interval < 1 or self.log_interval < 1:
            raise UserError("train.eval_interval and train.log_interval must be >= 1")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.z_loss < 0:
            raise UserError("train.weight_decay, train.grad_clip and train.z_loss must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.seed <= SEED_MAX:
            raise UserError(f"train.seed must be in [0, {SEED_MAX}], got {self.seed}")
        if self.threads < 0:
            raise UserError(f"train.threads must be >= 0 (0 keeps torch's default), got {self.threads}")
        if self.precision not in PRECISIONS:
            raise UserError(unknown_choice(self.precision, PRECISIONS, "train.precision"))
        if self.strategy not in STRATEGIES:
            raise UserError(unknown_choice(self.strategy, STRATEGIES, "train.strategy"))
        if self.devices < 1:
            raise UserError(f"train.devices must be >= 1, got {self.devices}")
        if self.devices > 1 and self.strategy != "ddp":
            raise UserError(f"train.devices {self.devices} needs train.strategy ddp (data-parallel trials); valid: "
                            "train.strategy: ddp, or train.devices: 1")


@dataclass(frozen=True)
class GuardConfig:
    """The divergence guard (see normfree_bench.guard)."""

    margin: float = 1.0  # a loss above l0 + margin is "high"
    patience: int = 50  # steps a loss must stay high before the run is called diverged

    def __post_init__(self) -> None:
        check_finite("guard", ("margin", self.margin))
        if self.margin < 0:
            raise UserError(f"guard.margin must be >= 0, got {self.margin}")
        if self.patience < 1:
            raise UserError(f"guard.patience must be >= 1, got {self.patience}")


@dataclass(frozen=True)
class SweepConfig:
    """The learning-rate grid (log-spaced, inclusive), seeds, baselines and optional extra axes."""

    lr_min: float = 1e-4
    lr_max: float = 1e-1
    n_lrs: int = 7
    lrs: list[float] | None = None  # explicit grid; overrides lr_min/lr_max/n_lrs (an empty list is an error)
    # Per-baseline grids, replacing the shared one for the baselines named (the ladder's zoomed grids).
    lrs_by_baseline: dict[str, list[float]] = field(default_factory=dict)
    seeds: int = 1  # seeds 0 .. seeds-1
    baselines: list[str] = field(default_factory=list)  # empty: every registered baseline of group "main"
    # Extra grid axes, "model.<field>" or "<baseline>.<hparam>": e.g. {"dyt.alpha_init": [0.5, 1.0]}.
    axes: dict[str, list[Any]] = field(default_factory=dict)
    reference: str = "layernorm"  # the scheme every other is compared with (targets, p-values, plots)
    # Held-out seeds: the chosen LR of every cell is re-run with this many fresh seeds after the grid
    # (seeds after the tuning ones); heldout_loss and p_vs_reference come from them alone. 0: none.
    eval_seeds: int = 3
    # A cell "trained" when its best loss is below trivial * (1 - trained_margin), trivial being the loss
    # of the best constant predictor (unigram bytes or class frequencies) on the run's validation data.
    trained_margin: float = 0.02
    sensitivity_window: list[float] = field(default_factory=lambda: [3e-4, 3e-1])  # Wortsman's LR window
    basin_tol: float = 0.1  # the LR basin: loss within basin_tol of what the cell learned (trivial - best)
    target_loss: float | None = None  # steps_to_target's target; None: the reference's loss, plus target_tol
    target_tol: float = 0.05  # ... of what the reference learned (trivial - its loss)

    def __post_init__(self) -> None:
        if self.lrs is not None and not self.lrs:
            raise UserError("sweep.lrs is an empty list; give at least one learning rate, or leave it out to use "
                            "the lr_min ... lr_max grid of n_lrs points")
        check_finite("sweep", ("basin_tol", self.basin_tol), ("target_loss", self.target_loss),
                     ("target_tol", self.target_tol), ("trained_margin", self.trained_margin))
        for name in ("basin_tol", "target_tol", "trained_margin"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"sweep.{name} must be in [0, 1) (a fraction of what a scheme learned), "
                                f"got {getattr(self, name)}")
        if self.eval_seeds < 0:
            raise UserError(f"sweep.eval_seeds must be >= 0 (0: no held-out seeds), got {self.eval_seeds}")
        window = self.sensitivity_window
        if len(window) != 2 or not all(math.isfinite(v) and v > 0 for v in window) or window[0] >= window[1]:
            raise UserError(f"sweep.sensitivity_window must be two learning rates [low, high] with "
                            f"0 < low < high, got {window}")
        grid = self.lrs or [self.lr_min, self.lr_max]
        if any(not (lr > 0 and math.isfinite(lr)) for lr in grid):
            raise UserError(f"sweep learning rates must be finite numbers > 0, got {grid}")
        if not self.lrs:
            if self.lr_max < self.lr_min:
                raise UserError(f"sweep.lr_max ({self.lr_max:g}) is below sweep.lr_min ({self.lr_min:g})")
            if self.n_lrs < 1:
                raise UserError(f"sweep.n_lrs must be >= 1, got {self.n_lrs}; the grid would be empty")
        if self.seeds < 1:
            raise UserError(f"sweep.seeds must be >= 1, got {self.seeds}")
        for name, lrs in self.lrs_by_baseline.items():
            if not isinstance(lrs, list) or not lrs or any(
                    isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr))
                    for lr in lrs):
                raise UserError(f"sweep.lrs_by_baseline.{name} must be a non-empty list of finite learning rates "
                                f"> 0, got {lrs}")
        for name, values in self.axes.items():
            if not isinstance(values, list) or not values:
                raise UserError(f"sweep.axes.{name} must be a non-empty list of values")

    def lr_grid(self, baseline: str | None = None) -> list[float]:
        """The grid, ascending: ``baseline``'s own grid in ``lrs_by_baseline``, else explicit ``lrs`` or
        ``n_lrs`` log-spaced points in [lr_min, lr_max]."""
        if baseline in self.lrs_by_baseline:
            return sorted(float(lr) for lr in self.lrs_by_baseline[baseline])
        if self.lrs:
            return sorted(float(lr) for lr in self.lrs)
        if self.n_lrs == 1:
            return [self.lr_min]
        lo, hi = math.log10(self.lr_min), math.log10(self.lr_max)
        return [float(f"{10 ** (lo + i * (hi - lo) / (self.n_lrs - 1)):.6g}") for i in range(self.n_lrs)]


@dataclass(frozen=True)
class RunConfig:
    """One training run: model, data, training, guard, and which baseline with which hyperparameters."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    baseline: str = "layernorm"
    # Per-baseline hyperparameter overrides, e.g. {"dyt": {"alpha_init": 0.5}}.
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        return config_hash(_hashed(self.to_dict()))

    def baseline_hparams(self, name: str | None = None) -> dict[str, Any]:
        return dict(self.hparams.get(name or self.baseline, {}))

    def sweep_hash(self) -> str:
        """The hash that names a sweep: everything but the baseline subset and the description."""
        data = _hashed(self.to_dict())
        data.pop("description")
        data.pop("baseline")
        data["sweep"] = {k: v for k, v in data["sweep"].items() if k != "baselines"}
        return config_hash(data)


def _hashed(data: dict[str, Any]) -> dict[str, Any]:
    """The config as hashed: ``model.norm_impl``, ``model.placement`` and ``model.input_scale`` left out when
    they are the defaults (eager, None, 1.0),
    ``sweep.lrs_by_baseline`` when it is empty, and ``train.compile``, ``train.devices``, ``train.strategy``,
    ``data.vocab_size``, ``data.tokenizer`` and ``data.text_field`` when they are the default, so that run
    directories recorded before those keys existed keep their hash."""
    if "model" in data:
        defaults = {"norm_impl": "eager", "placement": None, "input_scale": 1.0}
        data = {**data, "model": {k: v for k, v in data["model"].items() if k not in defaults or v != defaults[k]}}
    if "sweep" in data and not data["sweep"].get("lrs_by_baseline", True):
        data = {**data, "sweep": {k: v for k, v in data["sweep"].items() if k != "lrs_by_baseline"}}
    if "data" in data:
        defaults = {"vocab_size": None, "tokenizer": "bytes", "text_field": None}
        data = {**data, "data": {k: v for k, v in data["data"].items() if k not in defaults or v != defaults[k]}}
    if "train" in data:
        defaults = {"compile": None, "devices": 1, "strategy": "auto"}
        data = {**data, "train": {k: v for k, v in data["train"].items() if k not in defaults or v != defaults[k]}}
    return data


def config_hash(data: dict[str, Any]) -> str:
    """A stable 12-hex-digit hash of a config dictionary."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def unknown_choice(value: object, valid: typing.Iterable[str], what: str) -> str:
    return f"invalid {what} {value!r}; valid: {', '.join(map(str, valid))}"
