"""Shared fixtures. ``../shared/data`` sits next to the project root; tests that need it skip with
a reason only where the folder is absent (CI has it, so there they run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
VIDEO_GAMES = SHARED_DATA / "amazon2018" / "Video_Games"
GOODREADS = SHARED_DATA / "goodreads_sprec"


def need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent (it lives next to the project root as ../shared/data)")
    return path


@pytest.fixture
def video_games() -> Path:
    return need(VIDEO_GAMES)


@pytest.fixture
def goodreads() -> Path:
    return need(GOODREADS)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2_base(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted once per test session (blade/model/base_models.py); skips
    with the install command where the wheel is absent."""
    from blade.model import base_models

    if importlib.util.find_spec(base_models.spec(SMOLLM2).package) is None:
        pytest.skip(f"SmolLM2 is not installed: {base_models.install_hint(SMOLLM2)}")
    return base_models.convert(SMOLLM2, tmp_path_factory.mktemp("base") / SMOLLM2)
