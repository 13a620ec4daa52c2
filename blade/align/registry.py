"""The registry of alignment objectives: a name in a ``methods:`` entry → its Objective class.

Torch-free, so that validating a config (``snakemake -n``) only imports the objectives' modules,
which import torch lazily (:mod:`blade.lazy`).

A ``methods:`` entry is resolved once into a :class:`Method` (objective, module, validated options);
the config keeps its plain form (:meth:`Method.as_dict`), which is what a rule hands to ``blade
align``, and the job builds the objective from the :class:`Method` it resolves on arrival.

A name not yet registered is looked up, in order, in the built-in objectives (BLADE), as module
``baselines.<name>`` (so a baseline is one file plus one config entry), and in the module a
``methods:`` entry names with ``module:`` (a researcher's own package, no edit of this one).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from blade.config import from_dict
from blade.errors import ConfigError

OBJECTIVES: dict[str, type] = {}
# objectives that ship with the library itself, by the module that registers them
_BUILTIN = {"blade": "blade.align.blade_objective"}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make an Objective buildable by ``name``."""

    def deco(cls: type) -> type:
        if name in OBJECTIVES and OBJECTIVES[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"objective {name!r} is registered twice ({OBJECTIVES[name].__qualname__}, {cls.__qualname__})")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return deco


def _import(module: str, optional: bool) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # only "this module does not exist" is a lookup miss; a missing import inside it is a real error
        if not optional or not module.startswith(str(exc.name)):
            raise ConfigError(f"module {module!r} could not be imported: {exc}") from exc


def objective_class(name: str, module: str | None = None) -> type:
    """The objective registered as ``name`` (importing its module on first use)."""
    if name not in OBJECTIVES:
        if module:
            _import(module, optional=False)
        elif name in _BUILTIN:
            _import(_BUILTIN[name], optional=False)
        else:
            _import(f"baselines.{name}", optional=True)
    if name not in OBJECTIVES:
        where = f" (module {module!r} registers no objective of that name)" if module else ""
        raise ConfigError(f"objective: unknown method {name!r}{where}; known: {sorted(set(OBJECTIVES) | set(_BUILTIN))} "
                          "and any baselines/<name>.py")
    return OBJECTIVES[name]


def objective_config(name: str, config: Mapping[str, Any] | None, where: str | None = None,
                     module: str | None = None) -> Any:
    """Validate an objective's options against its ``config_class`` (None when it has none)."""
    cls = objective_class(name, module)
    return from_dict(cls.config_class, config or {}, where or f"objective.{name}") if cls.config_class else None


def build_objective(name: str, config: Mapping[str, Any] | None, prior: Any, module: str | None = None):
    """Build the objective registered as ``name`` from a plain config mapping."""
    return objective_class(name, module)(objective_config(name, config, module=module), prior)


@dataclass(frozen=True)
class Method:
    """A resolved ``methods:`` entry: the objective's name, the module that registers it (None:
    built-in or ``baselines/<name>.py``) and its validated options (its ``config_class``; None when
    it has none)."""

    objective: str
    module: str | None
    options: Any

    @classmethod
    def from_entry(cls, entry: Any, where: str) -> Method:
        """``{objective: NAME, module: MODULE (optional), **options}``, validated against the objective."""
        if not isinstance(entry, Mapping) or not isinstance(entry.get("objective"), str):
            raise ConfigError(f"{where}: a method needs `objective: NAME` plus that objective's options")
        module = entry.get("module")
        if module is not None and not isinstance(module, str):
            raise ConfigError(f"{where}.module: expected a Python module name, got {module!r}")
        name = entry["objective"]
        options = {k: v for k, v in entry.items() if k not in ("objective", "module")}
        return cls(name, module, objective_config(name, options, where, module))

    @property
    def objective_class(self) -> type:
        return objective_class(self.objective, self.module)

    def as_dict(self) -> dict[str, Any]:
        """The entry with every option filled in: the config's (and the run files') plain form."""
        head = {"objective": self.objective, **({"module": self.module} if self.module else {})}
        return {**head, **(dataclasses.asdict(self.options) if self.options is not None else {})}

    def build(self, prior: Any):
        """The objective, from the options validated once."""
        return self.objective_class(self.options, prior)
