"""Every objective the suite ships, found by scanning the packages rather than by a list, so the
smoke tests (tests/test_align.py, tests/test_baselines.py) train, score and check each one
without naming it: a new ``baselines/<name>.py`` that registers an objective is picked up with no
edit of any test. Also used on a researcher's own package (tests/test_registry_objectives.py)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from blade.align import registry

# Where the shipped objectives live: the built-ins (BLADE) and one file per baseline.
SHIPPED_PACKAGES = ("blade.align", "baselines")
# Options a smoke run gives some objectives — cost (BOND samples G = 4 anchor lists, not 8) or
# coverage (BLADE's defaults run in most tests of test_align.py; here its other estimator and
# loss). Every other objective, a new one included, runs with its defaults.
SMOKE_OPTIONS: dict[str, dict[str, Any]] = {
    "bond": {"anchor_samples": 4},
    "blade": {"estimator": "nig", "loss": "backward"},
}


def objectives_in(package: str) -> list[str]:
    """The names the modules of ``package`` register (each module imported), sorted."""
    found = []
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        module = f"{package}.{info.name}"
        importlib.import_module(module)
        # by the defining module: a name registered elsewhere (tests/ext_methods) is not this package's
        found += [name for name, cls in registry.OBJECTIVES.items() if cls.__module__ == module]
    return sorted(found)


def shipped_objectives() -> list[str]:
    """Every objective the suite ships: the built-ins, then the baselines."""
    return [name for package in SHIPPED_PACKAGES for name in objectives_in(package)]


def smoke_method(name: str, module: str | None = None) -> dict[str, Any]:
    """The ``methods:`` entry a smoke run trains ``name`` with."""
    return {"objective": name, **({"module": module} if module else {}), **SMOKE_OPTIONS.get(name, {})}


def reads_a_subset(name: str) -> bool:
    """An offline objective (``data = "reference"``) that declares the stored lists its loss reads."""
    from blade.align.objective import Objective

    cls = registry.objective_class(name)
    return cls.data == "reference" and cls.lists_read is not Objective.lists_read
