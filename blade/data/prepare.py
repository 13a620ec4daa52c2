"""``blade prepare``: a source → the canonical dataset directory (see :mod:`blade.data.canonical`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from blade.config import from_dict
from blade.data.canonical import SPLITS, DatasetSpec, finalize
from blade.data.leakage import leakage
from blade.data.sources import get_source
from blade.io import write_json, write_parquet


def resolve_spec(spec: dict | DatasetSpec, where: str = "dataset") -> tuple[DatasetSpec, Any]:
    """Validate a dataset spec and its source's params; returns (spec, params dataclass)."""
    if not isinstance(spec, DatasetSpec):
        spec = from_dict(DatasetSpec, spec, where)
    source = get_source(spec.source, f"{where}.source")
    params = from_dict(source.Params, spec.params, f"{where}.params")
    return spec, params


def prepare(spec: dict | DatasetSpec, out_dir: str | Path, where: str = "dataset") -> dict[str, Any]:
    """Build ``out_dir/{items,train,valid,test}.parquet`` and ``stats.json``; return the stats.

    Each file is written atomically and ``stats.json`` last, so an interrupted run leaves no
    ``stats.json`` and is simply run again.
    """
    started = time.perf_counter()
    spec, params = resolve_spec(spec, where)
    source = get_source(spec.source)
    raw = source.load(params, spec, where)
    items, splits, stats = finalize(raw, spec, where)
    stats["spec"]["params"] = dataclasses.asdict(params)
    stats["leakage"] = leakage(splits)  # is an evaluation row's continuation already in train?
    out = Path(out_dir)
    (out / "stats.json").unlink(missing_ok=True)
    write_parquet(out / "items.parquet", items)
    for name in SPLITS:
        write_parquet(out / f"{name}.parquet", splits[name])
    write_json(out / "stats.json", stats)
    stats["seconds"] = round(time.perf_counter() - started, 3)  # reported, not stored: files stay reproducible
    return stats
