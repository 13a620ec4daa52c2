"""Validation of the whole workflow config beyond its JSON schema.

The schema (``workflow/schemas/config.schema.yaml``) checks structure; this module checks every
component's typed options (unknown keys with a "did you mean", types, ranges) and cross-references
(every dataset named in ``run.datasets`` is defined). Snakemake calls it when it loads the config,
so a typo fails before any job starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from blade.config import from_dict, option
from blade.data.prepare import resolve_spec
from blade.errors import ConfigError
from blade.model.policy import PolicyConfig
from blade.train.sft import SFTConfig


@dataclass
class EvalConfig:
    k: int = option(20, help="length of the evaluated lists")
    ks: list[int] = option([5, 10, 20], help="metric cut-offs (each <= k)")
    splits: list[Literal["valid", "test"]] = option(["valid", "test"], help="splits to evaluate")
    references: list[Literal["mostpop", "cooc"]] = option(["mostpop", "cooc"], help="classic reference rows")

    def __post_init__(self) -> None:
        if any(not 1 <= k <= self.k for k in self.ks):
            raise ValueError(f"every cut-off in ks must lie in 1..k={self.k}, got {self.ks}")


def check_config(config: dict[str, Any]) -> None:
    datasets = config.get("datasets") or {}
    for name in config.get("run", {}).get("datasets", []):
        if name not in datasets:
            raise ConfigError(f"run.datasets names '{name}', which is not defined under datasets: {sorted(datasets)}")
    for name, spec in datasets.items():
        resolve_spec(spec, where=f"datasets.{name}")
    from_dict(PolicyConfig, config.get("policy"), "policy")
    from_dict(SFTConfig, config.get("sft"), "sft")
    from_dict(EvalConfig, config.get("evaluate"), "evaluate")
    _check_alignment(config)


def _check_alignment(config: dict[str, Any]) -> None:
    from blade.align.loop import AlignConfig, method_objective
    from blade.align.objective import objective_config
    from blade.align.rollout import RolloutConfig
    from blade.rewards import RewardConfig

    from_dict(RewardConfig, config.get("reward"), "reward")
    rollout = from_dict(RolloutConfig, config.get("rollout"), "rollout")
    align = from_dict(AlignConfig, config.get("align"), "align")
    if rollout.k != align.k:
        raise ConfigError(f"rollout.k={rollout.k} and align.k={align.k} differ; the prior must describe the lists "
                          "alignment samples, so set them equal")
    methods = config.get("methods") or {}
    for name in config.get("run", {}).get("methods", []):
        if name not in methods:
            raise ConfigError(f"run.methods names '{name}', which is not defined under methods: {sorted(methods)}")
        if name in ("sft", "mostpop", "cooc"):
            raise ConfigError(f"run.methods: '{name}' is a reserved row name (SFT or a reference); rename the method")
    for name, entry in methods.items():
        objective, options = method_objective(entry, f"methods.{name}")
        objective_config(objective, options, f"methods.{name}")
