"""The memory planner: what a reconstruction holds, and the refusal when it cannot fit."""

from __future__ import annotations

import pytest
import torch

import cryograd.reconstruction.memory as mem
from cryograd.errors import CryogradError

GIB = 2**30


def test_refusal_names_need_free_memory_and_smaller_plans(monkeypatch) -> None:
    """Box 448 at pad 2 with refinement cannot fit in 24 GiB: the message says how much it needs,
    how much is free, and what the smaller plans (refine=0, pad=1) need."""
    monkeypatch.setattr(mem, "_available_memory_bytes", lambda device: 24 * GIB)
    with pytest.raises(CryogradError) as info:
        mem.check_memory(448, "direct", 2.0, 256, torch.device("cpu"), torch.float32, refine=3)
    text = str(info.value)
    assert text.startswith("box 448 with method=direct pad=2 refine=3 needs about ")
    assert "but cpu has 24.0 GiB free" in text
    assert "refine=0 (about " in text and "pad=1 (about " in text
    assert "a machine with more memory" in text and "device='cpu'" not in text


def test_plans_that_fit_in_24_gib() -> None:
    """The plans the issue asks for on a 24 GiB machine (CPU, float32)."""
    for box, pad, refine in [
        (256, 2.0, 0),
        (256, 2.0, 3),
        (448, 1.0, 0),
        (448, 2.0, 0),
        (512, 1.0, 0),
    ]:
        need = mem.estimate_memory_bytes(box, "direct", pad, refine=refine)
        assert need < 24 * GIB, (box, pad, refine, need / GIB)


def test_fitting_run_passes_and_returns_the_estimate(monkeypatch) -> None:
    monkeypatch.setattr(mem, "_available_memory_bytes", lambda device: 64 * GIB)
    need = mem.check_memory(128, "direct", 2.0, 256, torch.device("cpu"), torch.float32)
    assert need == mem.estimate_memory_bytes(128, "direct", 2.0, 256)
    assert need < mem.estimate_memory_bytes(128, "direct", 2.0, 256, refine=3)
