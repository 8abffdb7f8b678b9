"""Configuration: the schema (one frozen dataclass per section), loading from YAML and ``--set``, suites.

Usage: ``cfg = load_run_config("configs/smoke.yaml", overrides=parse_set(["train.lr=1e-3"]))``
"""

from normfree_bench.config.loading import build_dataclass, coerce, load_run_config, merge, parse_set, read_yaml
from normfree_bench.config.schema import (
    MAX_TOKEN_VOCAB,
    MODEL_PRESETS,
    NORM_IMPLS,
    PLACEMENTS,
    DataConfig,
    GuardConfig,
    ModelConfig,
    RunConfig,
    SweepConfig,
    TrainConfig,
    config_hash,
    tokenizer_spec,
    unknown_choice,
)

__all__ = [
    "MAX_TOKEN_VOCAB", "MODEL_PRESETS", "NORM_IMPLS", "PLACEMENTS", "DataConfig", "GuardConfig", "ModelConfig",
    "RunConfig", "SweepConfig", "TrainConfig", "build_dataclass", "coerce", "config_hash", "load_run_config", "merge",
    "parse_set", "read_yaml", "tokenizer_spec", "unknown_choice",
]
