"""Dataset preparation: sources → the canonical dataset under ``results/data/{dataset}/``, and
:class:`PreparedData`, the one reader of it."""

from blade.data.canonical import SPLITS, DatasetSpec, RawDataset
from blade.data.prepare import prepare
from blade.data.prepared import PreparedData, load_prepared

__all__ = ["SPLITS", "DatasetSpec", "PreparedData", "RawDataset", "load_prepared", "prepare"]
