"""Centred transforms and frequency grids against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryograd.fourier import (
    fft2_centered,
    frequency_grid_2d,
    ifft2_centered,
    irfft2_centered,
    irfftn_centered,
    rfft2_centered,
    rfftn_centered,
    shell_index,
)


@pytest.mark.parametrize("box", [8, 9])
def test_centre_is_phase_origin(box: int) -> None:
    """A delta at N // 2 has a flat, real spectrum (RELION's centre rule)."""
    image = torch.zeros(box, box, dtype=torch.float64)
    image[box // 2, box // 2] = 1.0
    flat = torch.ones(box, box // 2 + 1, dtype=torch.complex128)
    assert torch.allclose(rfft2_centered(image), flat)
    volume = torch.zeros(box, box, box, dtype=torch.float64)
    volume[box // 2, box // 2, box // 2] = 1.0
    assert torch.allclose(rfftn_centered(volume).real, torch.ones(()).double())


@pytest.mark.parametrize("box", [8, 9])
def test_round_trips(box: int, rng: torch.Generator) -> None:
    x = torch.randn(2, box, box, generator=rng, dtype=torch.float64)
    assert torch.allclose(irfft2_centered(rfft2_centered(x), box), x)
    assert torch.allclose(ifft2_centered(fft2_centered(x)).real, x)
    v = torch.randn(box, box, box, generator=rng, dtype=torch.float64)
    assert torch.allclose(irfftn_centered(rfftn_centered(v), box), v)


def test_frequency_grid_matches_numpy() -> None:
    kx, ky = frequency_grid_2d(10, rfft=True, dtype=torch.float64)
    assert kx.shape == (10, 6)
    np.testing.assert_allclose(kx[0].numpy(), np.fft.rfftfreq(10) * 10)
    np.testing.assert_allclose(ky[:, 0].numpy(), np.fft.fftfreq(10) * 10)


def test_shell_index_counts() -> None:
    shells = shell_index(16, ndim=2, rfft=False)
    assert int(shells[0, 0]) == 0
    assert int((shells == 1).sum()) == 8  # (+-1,0),(0,+-1) and the four diagonals (|k| = 1.41)


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 7, 7), (6, 5), (2, 9, 9, 9), (8, 8, 8)])
@pytest.mark.parametrize("inverse", [False, True])
def test_block_shift_equals_torch_fftshift(shape, inverse) -> None:
    """The block-copy (i)fftshift of the centred transforms equals ``torch.fft`` (i)fftshift."""
    from cryograd.fourier import _fftshift_blocks

    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ndim = 3 if len(shape) == 4 or shape == (8, 8, 8) else 2
    dims = tuple(range(-ndim, 0))
    ref = torch.fft.ifftshift(x, dim=dims) if inverse else torch.fft.fftshift(x, dim=dims)
    assert torch.equal(_fftshift_blocks(x, ndim, inverse=inverse), ref)
