"""The slab-by-slab division and inverse transform equal the whole-grid formula.

Reference: ``crop(fftshift(irfftn(N / (W + ρ))))`` on the whole padded grid with NumPy's FFT, and
the shell index and shell sums of :mod:`cryograd.solvers.insertion` (whole-grid code).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cryograd.solvers.division as division
from cryograd.solvers import insertion as whole
from cryograd.solvers.insertion import FourierInsertion


def _random_insertion(d: int, p: int, seed: int) -> FourierInsertion:
    gen = torch.Generator().manual_seed(seed)
    shape = (p, p, p // 2 + 1)
    num = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
    w = torch.rand(shape, generator=gen) * 3.0
    w[w < 0.3] = 0.0  # empty samples
    return FourierInsertion(num, w, d, p, 10)


def _reference(ins: FourierInsertion, reg, max_shell) -> np.ndarray:
    d, p = ins.box_size, ins.padded
    shells = whole.padded_shell_index(d, p).numpy()
    w = ins.weights.numpy().astype(np.float64)
    if isinstance(reg, torch.Tensor):
        r = reg.numpy()[np.minimum(shells, reg.numel() - 1)]
    else:
        r = reg
    denom = w + r
    spec = np.where(denom > 0, ins.numerator.numpy() / np.where(denom > 0, denom, 1.0), 0.0)
    if max_shell is not None:
        spec[shells > max_shell] = 0.0
    vol = np.fft.fftshift(np.fft.irfftn(spec, s=(p, p, p), axes=(0, 1, 2)))
    o = p // 2 - d // 2
    return vol[o : o + d, o : o + d, o : o + d]


@pytest.mark.parametrize("d, pad", [(16, 2), (15, 2), (17, 1), (12, 3)])
@pytest.mark.parametrize("per_shell", [False, True])
@pytest.mark.parametrize("max_shell", [None, 5])
def test_divide_and_invert_equals_whole_grid(monkeypatch, d, pad, per_shell, max_shell):
    monkeypatch.setattr(division, "SLAB_SAMPLES", 700)  # many slabs
    p = int(round(d * pad))
    ins = _random_insertion(d, p, seed=d + p)
    reg = torch.linspace(0.1, 2.0, d // 2 + 1, dtype=torch.float64) if per_shell else 0.05
    got = division.divide_and_invert(ins, reg, max_shell=max_shell).numpy()
    ref = _reference(ins, reg, max_shell)
    assert got.shape == (d, d, d)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("d, p", [(16, 32), (15, 30), (17, 17)])
def test_shell_index_and_sums_equal_whole_grid(monkeypatch, d, p):
    monkeypatch.setattr(division, "SLAB_SAMPLES", 500)
    ins = _random_insertion(d, p, seed=1)
    ref = whole.padded_shell_index(d, p)
    assert torch.equal(division.shell_index_slab(d, p, 0, p), ref)
    assert torch.equal(division.shell_index_slab(d, p, 3, 7), ref[:, 3:7])
    sums, counts = division.weight_shell_sums(ins)
    ref_sums, ref_counts = whole.weight_shell_sums(ins)
    torch.testing.assert_close(sums, ref_sums, rtol=1e-12, atol=0)
    assert torch.equal(counts, ref_counts)
    assert division.default_regularizer(ins) == pytest.approx(whole.default_regularizer(ins))
