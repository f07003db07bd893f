"""Centred Fourier transforms, frequency grids and shells.

Real-space arrays are centred at index ``N // 2`` (RELION's rule). Fourier arrays are kept in
torch's unshifted layout: full grids ``(N, N)`` as ``torch.fft.fft2`` returns them, half grids
``(N, N // 2 + 1)`` as ``torch.fft.rfft2`` returns them. Frequencies are in integer units ``k``
(cycles per box); in 1/Å a frequency is ``k / (N · pixel_size)``, and Nyquist is
``1 / (2 · pixel_size)``.
"""

from __future__ import annotations

import itertools
import math
from types import EllipsisType

import torch

__all__ = [
    "rfft2_centered",
    "irfft2_centered",
    "fft2_centered",
    "ifft2_centered",
    "rfftn_centered",
    "irfftn_centered",
    "frequency_grid_2d",
    "frequency_grid_3d",
    "shell_index",
    "gaussian_blur",
]


def rfft2_centered(
    images: torch.Tensor, *, out: torch.Tensor | None = None, work: torch.Tensor | None = None
) -> torch.Tensor:
    """Half-grid DFT of images whose origin is pixel ``N // 2``.

    Parameters
    ----------
    images
        ``(..., N, N)`` real.
    out, work
        Optional memory to reuse (e.g. across batches): ``out`` ``(..., N, N // 2 + 1)`` complex
        for the result, ``work`` ``(..., N, N)`` real for the shifted images (overwritten).

    Returns
    -------
    torch.Tensor
        ``(..., N, N // 2 + 1)`` complex, unshifted layout (``out`` when given).
    """
    return torch.fft.rfft2(_fftshift_blocks(images, 2, inverse=True, out=work), out=out)


def irfft2_centered(spectra: torch.Tensor, box_size: int) -> torch.Tensor:
    """Inverse of :func:`rfft2_centered`: ``(..., N, N // 2 + 1)`` complex to ``(..., N, N)``."""
    out = torch.fft.irfft2(spectra, s=(box_size, box_size))
    return _fftshift_blocks(out, 2)


def fft2_centered(images: torch.Tensor) -> torch.Tensor:
    """Full-grid DFT of ``(..., N, N)`` images with origin at ``N // 2`` (unshifted layout)."""
    return torch.fft.fft2(_fftshift_blocks(images, 2, inverse=True))


def ifft2_centered(spectra: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2_centered` (complex output; take ``.real`` for real images)."""
    return _fftshift_blocks(torch.fft.ifft2(spectra), 2)


def rfftn_centered(volume: torch.Tensor) -> torch.Tensor:
    """Half-grid 3D DFT of ``(..., N, N, N)`` volumes with origin at voxel ``N // 2``.

    Returns ``(..., N, N, N // 2 + 1)`` complex in the unshifted layout ``[kz, ky, kx]``.
    """
    return torch.fft.rfftn(_fftshift3(volume, inverse=True), dim=(-3, -2, -1))


def irfftn_centered(spectra: torch.Tensor, box_size: int) -> torch.Tensor:
    """Inverse of :func:`rfftn_centered`: back to ``(..., N, N, N)`` real, origin at ``N // 2``."""
    out = torch.fft.irfftn(spectra, s=(box_size,) * 3, dim=(-3, -2, -1))
    return _fftshift3(out)


def _fftshift3(x: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
    """``torch.fft.fftshift`` (``inverse``: ``ifftshift``) over the last three dimensions."""
    return _fftshift_blocks(x, 3, inverse=inverse)


def _fftshift_blocks(
    x: torch.Tensor, ndim: int, *, inverse: bool = False, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``torch.fft.fftshift`` (``inverse``: ``ifftshift``) over the last ``ndim`` (2 or 3)
    dimensions by ``2^ndim`` block copies into one new tensor (or into ``out``, ``x``'s shape):
    the same values, without the per-dimension rolls of ``fftshift``, which hold several copies
    of a large grid and are about 3× slower on image batches (``(252, 128, 128)`` float32:
    3.2 ms instead of 10.9 ms)."""
    out = torch.empty_like(x) if out is None else out
    halves = []
    for n in x.shape[-ndim:]:
        h = (n + 1) // 2 if inverse else n // 2  # out[(i + h) mod n] = x[i]
        halves.append([(slice(h, n), slice(0, n - h)), (slice(0, h), slice(n - h, n))])
    for blocks in itertools.product(*halves):
        dst: tuple[EllipsisType | slice, ...] = (Ellipsis,) + tuple(d for d, _ in blocks)
        src: tuple[EllipsisType | slice, ...] = (Ellipsis,) + tuple(s for _, s in blocks)
        out[dst] = x[src]
    return out


def frequency_grid_2d(
    box_size: int,
    *,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer frequencies ``(kx, ky)`` of a 2D DFT grid in torch's unshifted layout.

    Parameters
    ----------
    box_size
        ``N``.
    rfft
        Half grid ``(N, N // 2 + 1)`` if true, else full grid ``(N, N)``.

    Returns
    -------
    kx, ky
        Each ``(N, W)``; divide by ``N · pixel_size`` for 1/Å.
    """
    ky = torch.fft.fftfreq(box_size, d=1.0 / box_size, device=device, dtype=dtype)
    if rfft:
        kx = torch.fft.rfftfreq(box_size, d=1.0 / box_size, device=device, dtype=dtype)
    else:
        kx = ky
    grid_ky, grid_kx = torch.meshgrid(ky, kx, indexing="ij")
    return grid_kx, grid_ky


def frequency_grid_3d(
    box_size: int,
    *,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer frequencies ``(kx, ky, kz)`` of a 3D DFT grid ``[kz, ky, kx]`` (unshifted layout)."""
    k = torch.fft.fftfreq(box_size, d=1.0 / box_size, device=device, dtype=dtype)
    if rfft:
        kx = torch.fft.rfftfreq(box_size, d=1.0 / box_size, device=device, dtype=dtype)
    else:
        kx = k
    gz, gy, gx = torch.meshgrid(k, k, kx, indexing="ij")
    return gx, gy, gz


def shell_index(box_size: int, *, ndim: int = 3, rfft: bool = True, device=None) -> torch.Tensor:
    """Index of the Fourier shell ``round(|k|)`` of every sample of a 2D or 3D DFT grid.

    Shell ``n`` holds frequencies with ``n - 0.5 <= |k| < n + 0.5``; shells run up to
    ``box_size // 2`` inside the inscribed sphere (corners get larger indices).
    """
    if ndim == 2:
        kx, ky = frequency_grid_2d(box_size, rfft=rfft, device=device, dtype=torch.float64)
        r = torch.sqrt(kx**2 + ky**2)
    elif ndim == 3:  # one z plane at a time: no float64 grids of the whole volume
        k = torch.fft.fftfreq(box_size, d=1.0 / box_size, device=device, dtype=torch.float64)
        kx = torch.fft.rfftfreq(box_size, d=1.0 / box_size, device=device, dtype=torch.float64)
        kx = kx if rfft else k
        r2_yx = k.view(-1, 1) ** 2 + kx.view(1, -1) ** 2
        out = torch.empty((box_size, box_size, kx.numel()), device=device, dtype=torch.long)
        for z in range(box_size):
            out[z] = torch.round(torch.sqrt(r2_yx + k[z] ** 2))
        return out
    else:
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    return torch.round(r).long()


def gaussian_blur(volume: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """``(D, D, D)`` volume convolved (periodically) with a unit-sum Gaussian of ``sigma_px``
    voxels: its spectrum times ``exp(−2π² σ² |k|²)`` (``k`` in cycles per voxel)."""
    shape = volume.shape[-3:]
    freqs = [torch.fft.fftfreq(n, device=volume.device, dtype=volume.dtype) for n in shape[:2]]
    freqs.append(torch.fft.rfftfreq(shape[2], device=volume.device, dtype=volume.dtype))
    # separable: the product of one exp per axis, multiplied into (re, im) in place
    fz, fy, fx = (torch.exp(-2.0 * math.pi**2 * sigma_px**2 * f**2) for f in freqs)
    kernel = (fz.view(-1, 1) * fy.view(1, -1)).unsqueeze(-1) * fx
    spectrum = torch.fft.rfftn(volume)
    torch.view_as_real(spectrum).mul_(kernel.unsqueeze(-1))
    del kernel
    return torch.fft.irfftn(spectrum, s=shape)
