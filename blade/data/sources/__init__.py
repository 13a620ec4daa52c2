"""Data sources. Each module defines ``Params`` (a dataclass of its options, with help texts and
the protocol's defaults) and ``load(params, spec, where) -> RawDataset``."""

from __future__ import annotations

import importlib
from types import ModuleType

from blade.errors import ConfigError

SOURCES = {
    "synthetic": "blade.data.sources.synthetic",
    "bigrec_csv": "blade.data.sources.bigrec_csv",
    "instruction_json": "blade.data.sources.instruction_json",
    "amazon2018": "blade.data.sources.amazon2018",
}


def get_source(name: str, where: str = "source") -> ModuleType:
    if name not in SOURCES:
        raise ConfigError(f"{where}: unknown source '{name}'; valid sources: {', '.join(SOURCES)}")
    return importlib.import_module(SOURCES[name])
