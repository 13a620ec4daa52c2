"""A prepared dataset, loaded once per job and handed down (:class:`PreparedData`).

This is the one place the files of ``results/data/{dataset}/`` (blade/data/canonical.py) are read
back, so it is where a missing or damaged one is explained: the error names the file and the
command that rebuilds it, instead of ending in pyarrow's traceback. Every stage loads the dataset
once (``PreparedData.load``) and passes the object down; nothing below a stage takes a data path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from blade.data.canonical import SPLITS
from blade.errors import ConfigError, DataError

# The files a training run reads, for its checkpoint fingerprint. Never test.parquet: nothing
# written before the test evaluation may depend on test targets (tests/test_protocol_honesty.py);
# nor stats.json, which also reports on the test split.
TRAINING_FILES = ("items.parquet", "train.parquet", "valid.parquet")


def _rebuild(directory: Path) -> str:
    return (f"rebuild it: `snakemake --cores all --forcerun prepare {directory}/stats.json` (or `blade prepare "
            f"--config CONFIG --dataset NAME --out {directory}`)")


def _read_parquet(path: Path, directory: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path} is missing from the prepared dataset {directory}; {_rebuild(directory)}")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a truncated or foreign file
        raise DataError(f"{path} is damaged and cannot be read as Parquet ({type(exc).__name__}: {exc}); "
                        f"{_rebuild(directory)}") from exc


@dataclass
class PreparedData:
    """Items, the three splits and the statistics of one prepared dataset.

    ``items``: item_id, title, genres, train_pop, pop_group (sorted by item_id);
    ``splits[name]``: context_id, user_id, history (list of int), target, timestamp;
    ``stats``: the contents of stats.json (counts, groups, shares: computed by ``blade prepare``)."""

    directory: Path
    items: pd.DataFrame
    splits: dict[str, pd.DataFrame]
    stats: dict[str, Any]

    @classmethod
    def load(cls, directory: str | Path) -> PreparedData:
        directory = Path(directory)
        stats_path = directory / "stats.json"
        if not stats_path.is_file():  # written last by `blade prepare`: its absence marks an unfinished dataset
            raise DataError(f"{directory} is not a prepared dataset (no stats.json); {_rebuild(directory)}")
        try:
            stats = json.loads(stats_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{stats_path} is damaged ({exc}); {_rebuild(directory)}") from exc
        items = _read_parquet(directory / "items.parquet", directory)
        splits = {name: _read_parquet(directory / f"{name}.parquet", directory) for name in SPLITS}
        for frame in splits.values():
            frame["history"] = frame["history"].map(lambda h: [int(i) for i in h])
        return cls(directory, items, splits, stats)

    # ---- splits ---------------------------------------------------------------------------
    def split(self, name: str) -> pd.DataFrame:
        if name not in self.splits:
            raise ConfigError(f"unknown split {name!r}; valid: {sorted(self.splits)}")
        return self.splits[name]

    @property
    def train(self) -> pd.DataFrame:
        return self.splits["train"]

    @property
    def valid(self) -> pd.DataFrame:
        return self.splits["valid"]

    # ---- items ----------------------------------------------------------------------------
    @cached_property
    def item_ids(self) -> np.ndarray:
        return self.items["item_id"].to_numpy()

    @property
    def n_items(self) -> int:
        return len(self.items)

    def catalogue(self, split: str | None = None):
        """The item-side :class:`blade.metrics.Catalogue`; with ``split``, carrying that split's
        histories (one per row of the lists to be scored: MGU's reference)."""
        from blade.metrics import build_catalogue

        history = None if split is None else self.split(split)["history"].tolist()
        return build_catalogue(self.items, self.stats, history=history)

    # ---- provenance -----------------------------------------------------------------------
    @property
    def training_files(self) -> list[Path]:
        """The files a training run reads (:data:`TRAINING_FILES`), for its checkpoint fingerprint."""
        return [self.directory / name for name in TRAINING_FILES]

    def as_tuple(self) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, Any]]:
        return self.items, self.splits, self.stats


def load_prepared(directory: str | Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, Any]]:
    """(items, {split: frame}, stats) of a prepared dataset — for scripts and tests; the stages
    hold a :class:`PreparedData`."""
    return PreparedData.load(directory).as_tuple()
