"""Fourier-space shifts: whole pixels equal torch.roll, t then -t is the identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryograd.fourier import irfft2_centered, rfft2_centered
from cryograd.shift import phase_ramp, shift_images, shift_spectra


@pytest.mark.parametrize("box", [16, 17])
def test_integer_shift_equals_roll(box: int, rng: torch.Generator) -> None:
    images = torch.randn(4, box, box, generator=rng, dtype=torch.float64)
    shifts = torch.tensor([[1.0, 0.0], [0.0, -2.0], [3.0, 5.0], [-4.0, 1.0]], dtype=torch.float64)
    out = shift_images(images, shifts)
    for i in range(4):
        tx, ty = int(shifts[i, 0]), int(shifts[i, 1])
        expected = torch.roll(images[i], shifts=(ty, tx), dims=(-2, -1))
        assert torch.allclose(out[i], expected, atol=1e-12)


@pytest.mark.parametrize("box", [16, 17])
def test_shift_then_unshift_is_identity(box: int, rng: torch.Generator) -> None:
    images = torch.randn(3, box, box, generator=rng, dtype=torch.float64)
    shifts = torch.rand(3, 2, generator=rng, dtype=torch.float64) * 6 - 3
    spectra = rfft2_centered(images)
    # As operators on spectra the two ramps compose to exactly 1.
    back = shift_spectra(shift_spectra(spectra, shifts), -shifts)
    assert torch.allclose(back, spectra, atol=1e-12)
    # On real images too (for even boxes the Nyquist row and column carry no sub-pixel phase,
    # so compare on an image without Nyquist content).
    if box % 2 == 0:
        spectra[..., box // 2, :] = 0
        spectra[..., :, box // 2] = 0
        images = irfft2_centered(spectra, box)
    out = shift_images(shift_images(images, shifts), -shifts)
    assert torch.allclose(out, images, atol=1e-10)


def test_subpixel_shift_moves_centre_of_mass() -> None:
    box = 32
    y, x = torch.meshgrid(torch.arange(box), torch.arange(box), indexing="ij")
    blob = torch.exp(-((x - 16.0) ** 2 + (y - 16.0) ** 2) / (2 * 2.0**2)).double()[None]
    t = torch.tensor([[0.3, -1.7]], dtype=torch.float64)
    out = shift_images(blob, t)[0]
    cx = float((out * x).sum() / out.sum())
    cy = float((out * y).sum() / out.sum())
    assert cx == pytest.approx(16.3, abs=1e-6) and cy == pytest.approx(16.0 - 1.7, abs=1e-6)


def test_phase_ramp_formula() -> None:
    box = 8
    t = torch.tensor([[0.5, 1.25]], dtype=torch.float64)
    ramp = phase_ramp(t, box, rfft=False)[0].numpy()
    k = np.fft.fftfreq(box) * box
    ky, kx = np.meshgrid(k, k, indexing="ij")
    expected = np.exp(-2j * np.pi * (kx * 0.5 + ky * 1.25) / box)
    np.testing.assert_allclose(ramp, expected, atol=1e-12)
