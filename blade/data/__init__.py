"""Dataset preparation: sources → the canonical dataset under ``results/data/{dataset}/``."""

from blade.data.canonical import SPLITS, DatasetSpec, RawDataset, load_prepared
from blade.data.prepare import prepare

__all__ = ["SPLITS", "DatasetSpec", "RawDataset", "load_prepared", "prepare"]
