"""One typed, validated experiment configuration, resolved once per DAG.

The Snakefile's config (``config/config.yaml`` plus any ``--configfile``) is checked against the
JSON schema for structure, then :func:`resolve` turns it into an :class:`ExperimentConfig`: every
section a typed dataclass with its defaults filled in, every method's options validated by its
objective's config class, and the cross-references checked (datasets, reward settings and methods
named under ``run`` exist; rollout and alignment lists have the same K). The rules pass the
resolved sections to the ``blade`` commands, so each option's default is written once — in the
dataclass that defines and validates it.

Nothing here imports torch or transformers: a dry run costs what Snakemake costs. (Objective
modules import torch lazily, see :mod:`blade.lazy`.)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from blade.align.config import AlignConfig, RolloutConfig
from blade.config import from_dict, option
from blade.data.canonical import DatasetSpec
from blade.errors import ConfigError
from blade.eval.config import NO_REWARD, UNALIGNED_ROWS, EvalConfig
from blade.model.config import PolicyConfig
from blade.rewards import RewardConfig
from blade.train.config import SFTConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+.\-]*$")


@dataclass
class RunConfig:
    datasets: list[str] = option(help="names of entries under `datasets` to run")
    seeds: list[int] = option([0], help="one run per seed for every stochastic stage")
    methods: list[str] = option([], help="names of entries under `methods` to align (SFT and the reference rows "
                                        "always run)")
    rewards: list[str] = option(["ndcg"], help="names of entries under `rewards` (reward settings); every method is "
                                              "trained under each")

    sweep: list[str] = option([], help="more entries of `methods` (e.g. BLADE variants: the §6.6 ablation sweep), "
                                       "trained under the first reward setting and those of sweep_rewards")
    sweep_rewards: list[str] = option([], help="more reward settings (entries of run.rewards) the sweep also runs "
                                               "under, e.g. the graded accuracy setting")
    processes: int = option(1, help="data-parallel processes per SFT and alignment job (accelerate launch; one per "
                                    "GPU, blade/distributed.py); 1 = one plain process")
    tracking_uri: str = option("", help="MLflow tracking URI every job logs to (e.g. http://host:5000, a shared "
                                        "tracking server for a cluster); empty = $MLFLOW_TRACKING_URI, else the "
                                        "SQLite store results/mlflow.db")

    def __post_init__(self) -> None:
        for key in ("datasets", "seeds", "rewards"):
            if not getattr(self, key):
                raise ValueError(f"{key} must name at least one entry")
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be >= 0, got {self.seeds}")


@dataclass
class ExperimentConfig:
    run: RunConfig = option(help="what the DAG runs")
    datasets: dict[str, DatasetSpec] = option(help="every dataset the workflow knows")
    policy: PolicyConfig = option(default_factory=PolicyConfig, help="the list policy (`blade options policy`)")
    sft: SFTConfig = option(default_factory=SFTConfig, help="the supervised warm-up (`blade options sft`)")
    sft_by_dataset: dict[str, dict[str, Any]] = option(
        {}, help="changes to the sft section for one dataset: {dataset: {option: value}} (e.g. `prefixes: true` where "
                 "a dataset's rows are single windows); the other datasets keep `sft`")
    evaluate: EvalConfig = option(default_factory=EvalConfig, help="evaluation and model selection (`blade options evaluate`)")
    rewards: dict[str, RewardConfig] = option(default_factory=lambda: {"ndcg": RewardConfig()},
                                              help="named reward settings (`blade options reward`)")
    rollout: RolloutConfig = option(default_factory=RolloutConfig, help="reference rollouts (`blade options rollout`)")
    align: AlignConfig = option(default_factory=AlignConfig, help="the shared alignment loop (`blade options align`)")
    methods: dict[str, dict[str, Any]] = option({}, help="aligned methods: `objective: NAME` plus its options")
    partial: bool = option(False, help="analyse what exists: the DAG runs only the analysis, on the per-run files "
                                       "already written (after a run whose failed jobs `--keep-going` left out); "
                                       "every table names its missing rows. `snakemake --config partial=True`")

    def method(self, name: str) -> dict[str, Any]:
        return self.methods[name]

    @property
    def aligned(self) -> list[str]:
        """Every aligned method the DAG trains: ``run.methods``, then the ``run.sweep`` entries."""
        return list(dict.fromkeys([*self.run.methods, *self.run.sweep]))

    def methods_for(self, setting: str) -> list[str]:
        """The aligned methods trained under a reward setting (the sweep: under the first and run.sweep_rewards)."""
        if setting == self.run.rewards[0] or setting in self.run.sweep_rewards:
            return self.aligned
        return list(self.run.methods)

    def sft_for(self, dataset: str) -> dict[str, Any]:
        """The sft section a dataset trains with: ``sft``, changed by ``sft_by_dataset[dataset]``."""
        changes = self.sft_by_dataset.get(dataset, {})
        return dataclasses.asdict(from_dict(SFTConfig, {**self.section("sft"), **changes}, f"sft_by_dataset.{dataset}"))

    def section(self, name: str) -> dict[str, Any]:
        """A section as plain data (defaults filled): what the rules hand to the ``blade`` commands."""
        return dataclasses.asdict(getattr(self, name))


_SECTIONS = {"policy": PolicyConfig, "sft": SFTConfig, "evaluate": EvalConfig, "rollout": RolloutConfig,
             "align": AlignConfig}


def resolve(config: dict[str, Any]) -> ExperimentConfig:
    """Validate a whole workflow config and fill every default; raises :class:`ConfigError` naming the key."""
    if not isinstance(config, dict):
        raise ConfigError("the config must be a mapping of sections")
    exp = from_dict(ExperimentConfig, config, "")
    _check_names(exp)
    for name in exp.sft_by_dataset:
        if name not in exp.datasets:
            raise ConfigError(f"sft_by_dataset.{name}: no dataset of that name under datasets: {sorted(exp.datasets)}")
        exp.sft_for(name)  # each change checked where SFTConfig defines it
    for name, spec in exp.datasets.items():
        from blade.data.prepare import resolve_spec

        resolve_spec(spec, where=f"datasets.{name}")
    if exp.rollout.k != exp.align.k:
        raise ConfigError(f"rollout.k={exp.rollout.k} and align.k={exp.align.k} differ; the prior must describe the "
                          "lists alignment samples, so set them equal")
    exp.methods = {name: resolve_method(entry, f"methods.{name}") for name, entry in exp.methods.items()}
    return exp


def resolve_method(entry: Any, where: str) -> dict[str, Any]:
    """``{objective: NAME, **options}`` with every option of the objective's config filled in."""
    from blade.align.registry import Method

    return Method.from_entry(entry, where).as_dict()


def _check_names(exp: ExperimentConfig) -> None:
    if NO_REWARD in exp.rewards:
        raise ConfigError(f"rewards.{NO_REWARD}: reserved (it names the rows trained under no reward setting)")
    for key, defined in (("datasets", exp.datasets), ("methods", exp.methods), ("rewards", exp.rewards)):
        for name in getattr(exp.run, key):
            if name not in defined:
                raise ConfigError(f"run.{key} names '{name}', which is not defined under {key}: {sorted(defined)}")
        for name in defined:
            if not _NAME.match(name):
                raise ConfigError(f"{key}.{name}: a name may hold letters, digits and _ + . - (it names directories)")
    for name in exp.run.sweep_rewards:
        if name not in exp.run.rewards:
            raise ConfigError(f"run.sweep_rewards names '{name}', which is not in run.rewards: {exp.run.rewards}")
    for name in exp.run.sweep:
        if name not in exp.methods:
            raise ConfigError(f"run.sweep names '{name}', which is not defined under methods: {sorted(exp.methods)}")
    for name in exp.aligned:
        if name in UNALIGNED_ROWS or re.match(r"^(oracle_)?bon_n\d+$", name):
            raise ConfigError(f"run.methods: '{name}' is a reserved row name (SFT, a reference or a Best-of-N row); "
                              "rename the method")
    for name, ext in exp.evaluate.external.items():
        where = f"evaluate.external.{name}"
        if not _NAME.match(name):
            raise ConfigError(f"{where}: a name may hold letters, digits and _ + . - (it names directories)")
        if name in UNALIGNED_ROWS or name in exp.methods or re.match(r"^(oracle_)?bon_n\d+$", name):
            raise ConfigError(f"{where}: '{name}' is already a row (SFT, a reference, a Best-of-N row or a method); "
                              "give the external row a name of its own")
        if len(exp.run.datasets) > 1 and "{dataset}" not in ext.path:
            raise ConfigError(f"{where}.path {ext.path!r}: run.datasets names {len(exp.run.datasets)} datasets, so "
                              "the path needs a {dataset} placeholder (one file per dataset)")
