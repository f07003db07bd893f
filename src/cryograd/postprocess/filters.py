"""Radial Fourier filters of post-processing, on the half (``rfftn``) grid of an ``(N, N, N)`` map.

Every filter here is a function of ``|k|`` (integer frequency units, cycles per box) evaluated
at the samples of :func:`cryograd.fourier.rfftn_centered`'s grid, so filtering a map is one
forward and one inverse transform with products in between (see :func:`apply_filter`).
"""

from __future__ import annotations

import math

import torch

from cryograd.errors import CryogradError
from cryograd.fourier import frequency_grid_3d, irfftn_centered, rfftn_centered

__all__ = [
    "frequency_radius",
    "relion_round",
    "lowpass_weights",
    "lowpass_weights_at_shell",
    "apply_filter",
    "lowpass_map",
]


def relion_round(x: float) -> int:
    """RELION's ``ROUND``: the nearest integer, halves away from zero (``2.5 -> 3``)."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def frequency_radius(box: int, *, device=None) -> torch.Tensor:
    """``|k|`` of every half-grid sample in integer frequency units.

    Returns
    -------
    torch.Tensor
        ``(N, N, N // 2 + 1)`` float64.
    """
    kx, ky, kz = frequency_grid_3d(box, rfft=True, device=device, dtype=torch.float64)
    return torch.sqrt(kx**2 + ky**2 + kz**2)


def lowpass_weights(
    box: int,
    resolution_angstrom: float,
    pixel_size: float,
    *,
    edge_width_shells: int = 2,
    device=None,
) -> torch.Tensor:
    """RELION's ``lowPassFilterMap``: a raised-cosine low-pass around the shell of a resolution.

    The filter shell is ``i = ROUND(N · pixel_size / resolution)``; the weight is 1 below
    ``(i - w/2) / N``, 0 above ``(i + w/2) / N`` (in 1/pixel, ``w = edge_width_shells``, integer
    halving as RELION) and ``0.5 + 0.5 cos(π (|k|/N - low) / (high - low))`` in between.

    Parameters
    ----------
    box
        ``N``.
    resolution_angstrom
        Resolution of the filter in Å (> 0).
    pixel_size
        Å per pixel.
    edge_width_shells
        Width of the soft edge in shells (RELION's ``--filter_edge_width``, 2).

    Returns
    -------
    torch.Tensor
        ``(N, N, N // 2 + 1)`` float64 weights in ``[0, 1]``.
    """
    if not resolution_angstrom > 0:
        raise CryogradError(f"resolution_angstrom must be positive, got {resolution_angstrom}")
    ires = relion_round(box * pixel_size / resolution_angstrom)
    return lowpass_weights_at_shell(box, ires, edge_width_shells=edge_width_shells, device=device)


def lowpass_weights_at_shell(
    box: int, shell: int, *, edge_width_shells: int = 2, device=None
) -> torch.Tensor:
    """:func:`lowpass_weights` for the filter shell ``shell`` directly: ``(N, N, N // 2 + 1)``."""
    half = int(edge_width_shells) // 2
    low = max(0.0, (shell - half) / box)
    high = (shell + half) / box
    res = frequency_radius(box, device=device) / box
    w = torch.ones_like(res)
    if high > low:
        edge = 0.5 + 0.5 * torch.cos(math.pi * (res - low) / (high - low))
        w = torch.where(res >= low, edge, w)
    return torch.where(res > high, torch.zeros_like(w), w)


def apply_filter(volume: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Multiply the half-grid DFT of a map by ``weights`` and transform back.

    Parameters
    ----------
    volume
        ``(N, N, N)`` real map.
    weights
        ``(N, N, N // 2 + 1)`` real weights (any filter of this module, or a product of them).

    Returns
    -------
    torch.Tensor
        ``(N, N, N)`` float64.
    """
    box = volume.shape[-1]
    spec = rfftn_centered(volume.to(torch.float64))
    return irfftn_centered(spec * weights.to(spec.device), box)


def lowpass_map(
    volume, resolution_angstrom: float, pixel_size: float, *, edge_width_shells: int = 2
) -> torch.Tensor:
    """A map low-passed with :func:`lowpass_weights`: ``(N, N, N)`` float64."""
    v = torch.as_tensor(volume)
    w = lowpass_weights(
        v.shape[-1],
        resolution_angstrom,
        pixel_size,
        edge_width_shells=edge_width_shells,
        device=v.device,
    )
    return apply_filter(v, w)
