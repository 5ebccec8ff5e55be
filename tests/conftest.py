"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = REPO.parent / "shared" / "data" / "real"

# Tests must not fight over 2 cores or write to the user's cache.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path_factory.getbasetemp() / "polmap-cache"
    monkeypatch.setenv("POLMAP_CACHE", str(cache))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Test processes share 2 cores; one intra-op thread avoids oversubscription
    # (measured: 2 threads made small-network steps up to 20x slower).
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared_real() -> Path:
    """The real detector files in ../shared/data/real (skips when absent)."""
    if not SHARED_REAL.is_dir():
        pytest.skip(f"real detector files not found at {SHARED_REAL}")
    return SHARED_REAL


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
