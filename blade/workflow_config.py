"""Validation of the whole workflow config beyond its JSON schema.

The schema (``workflow/schemas/config.schema.yaml``) checks structure; this module checks every
component's typed options (unknown keys with a "did you mean", types, ranges) and cross-references
(every dataset named in ``run.datasets`` is defined). Snakemake calls it when it loads the config,
so a typo fails before any job starts.
"""

from __future__ import annotations

from typing import Any

from blade.data.prepare import resolve_spec
from blade.errors import ConfigError


def check_config(config: dict[str, Any]) -> None:
    datasets = config.get("datasets") or {}
    for name in config.get("run", {}).get("datasets", []):
        if name not in datasets:
            raise ConfigError(f"run.datasets names '{name}', which is not defined under datasets: {sorted(datasets)}")
    for name, spec in datasets.items():
        resolve_spec(spec, where=f"datasets.{name}")
