"""Shared test fixtures: the real files in ../shared/data, devices, seeded generators."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).resolve().parent
SHARED_DATA = Path(os.environ.get("CRYOGRAD_SHARED_DATA", _HERE.parent.parent / "shared" / "data"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$CRYOGRAD_SHARED_DATA``); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def shared_file(relative: str) -> Path:
    """A file under the shared data folder; skips the calling test when it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared test file not found: {path}")
    return path


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every torch device available here (CPU always, CUDA when present)."""
    return torch.device(request.param)


@pytest.fixture
def rng() -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(1234)
