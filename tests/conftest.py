"""Shared fixtures. ``../shared/data`` sits next to the project root; tests that need it skip with
a reason only where the folder is absent (CI has it, so there they run)."""

from __future__ import annotations

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
