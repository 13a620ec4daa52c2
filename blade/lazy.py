"""Modules imported on first use: ``from blade.lazy import torch`` instead of ``import torch``.

Why: ``snakemake -n`` (and every ``blade`` command that only validates a config) resolves each
method's options through its objective's ``config_class``, which imports the objective's module.
Importing torch costs seconds and hundreds of MiB; a dry run must not pay it. An objective module
therefore binds ``torch`` (and ``F``) to a :class:`LazyModule` proxy at import time and the real
module is imported the first time an attribute is read — i.e. the first time a loss is computed.

Rules for a lazily-importing module: ``from __future__ import annotations`` (so ``torch.Tensor``
in annotations stays a string), no module-level ``@torch.no_grad()`` decorators or other module-level
attribute reads (use ``with torch.no_grad():`` inside the function instead).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """A stand-in for module ``name`` that imports it on the first attribute access and then
    forwards every attribute read to it (``torch.zeros``, ``torch.Tensor``, ``F.logsigmoid``)."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return self._module

    def __getattr__(self, attr: str) -> Any:
        # only reached for names not in __slots__, i.e. the wrapped module's attributes
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not yet imported"
        return f"<lazy module {self._name!r} ({state})>"


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")
