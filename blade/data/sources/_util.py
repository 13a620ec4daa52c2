"""Helpers shared by the file-based sources."""

from __future__ import annotations

from pathlib import Path

from blade.errors import DataError


def resolve_path(path: str, where: str) -> Path:
    """An existing path, or a DataError that says which config key to change."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"{where}: data path '{path}' does not exist (resolved to {p.resolve()}); "
            "point it at the dataset's folder or file — paths are relative to the directory you run from"
        )
    return p


def require_file(folder: Path, name: str, where: str) -> Path:
    p = folder / name
    if not p.is_file():
        present = sorted(x.name for x in folder.iterdir()) if folder.is_dir() else []
        raise DataError(f"{where}: expected file {p} is missing (the folder holds: {present})")
    return p
