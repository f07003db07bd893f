"""In-plane shifts as Fourier phase ramps.

A real-space shift by ``t = (tx, ty)`` pixels (content moves by ``+t``) multiplies the centred DFT
by ``exp(-2πi (kx·tx + ky·ty) / N)``. RELION's origin is the shift that centres the particle, so the
forward model shifts the centred projection by ``-origin`` and back-projection shifts the image by
``+origin``.
"""

from __future__ import annotations

import math

import torch

from cryograd.fourier import frequency_grid_2d, irfft2_centered, rfft2_centered

__all__ = ["phase_ramp", "shift_spectra", "shift_images"]


def phase_ramp(
    shifts_px: torch.Tensor,
    box_size: int,
    *,
    rfft: bool = True,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Phase ramps that shift images by ``shifts_px``.

    Parameters
    ----------
    shifts_px
        ``(b, 2)`` shifts ``(tx, ty)`` in pixels; content moves by ``+t``.
    box_size
        Image side ``N``.
    rfft
        Half grid ``(N, N // 2 + 1)`` or full grid ``(N, N)``, torch's unshifted layout.
    dtype
        Real dtype of the frequencies (default: that of ``shifts_px``).

    Returns
    -------
    torch.Tensor
        ``(b, N, W)`` complex, ``exp(-2πi (kx·tx + ky·ty) / N)``.
    """
    shifts_px = torch.as_tensor(shifts_px)
    dtype = dtype or (shifts_px.dtype if shifts_px.is_floating_point() else torch.float64)
    kx, ky = frequency_grid_2d(box_size, rfft=rfft, device=shifts_px.device, dtype=dtype)
    t = shifts_px.to(dtype)
    phase = (-2 * math.pi / box_size) * (kx * t[:, 0, None, None] + ky * t[:, 1, None, None])
    return torch.polar(torch.ones_like(phase), phase)


def shift_spectra(spectra: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Shift half-grid spectra ``(b, N, N // 2 + 1)`` by ``shifts_px`` ``(b, 2)`` pixels."""
    n = spectra.shape[-2]
    real_dtype = spectra.real.dtype
    return spectra * phase_ramp(shifts_px, n, rfft=True, dtype=real_dtype)


def shift_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Shift real images ``(b, N, N)`` by sub-pixel amounts ``(b, 2)`` ``(tx, ty)`` in Fourier.

    A whole-pixel shift equals ``torch.roll(images, (ty, tx), dims=(-2, -1))``.
    """
    n = images.shape[-1]
    return irfft2_centered(shift_spectra(rfft2_centered(images), shifts_px), n)
