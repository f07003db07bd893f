"""Solvent masks by ``relion_mask_create``'s rules: low-pass, threshold, extend, raised-cosine edge.

RELION 3.1 (``autoMask`` in ``src/mask.cpp``, ``relion_mask_create --lowpass --ini_threshold
--extend_inimask --width_soft_edge``):

1. the map is low-passed at ``lowpass_angstrom`` with RELION's raised-cosine filter
   (:func:`cryograd.postprocess.filters.lowpass_weights`);
2. voxels ``>= threshold`` form the initial binary mask;
3. a voxel outside it becomes 1 when a mask voxel lies at a distance ``d`` with ``d² < extend²``
   (a negative ``extend`` shrinks: a mask voxel becomes 0 when a non-mask voxel is that close);
4. a voxel outside the extended mask whose nearest mask voxel lies at ``d < soft_edge`` gets
   ``0.5 + 0.5 cos(π d / soft_edge)``.

Distances are exact Euclidean distances between voxel centres inside the box (no wrap-around),
computed by a separable minimum over axis offsets (exact up to the largest radius needed).
"""

from __future__ import annotations

import math

import torch

from cryograd.errors import CryogradError
from cryograd.postprocess.filters import lowpass_map

__all__ = ["squared_distance_to_set", "create_mask", "sphere_mask"]


def squared_distance_to_set(
    binary: torch.Tensor, max_distance: float, *, periodic: bool = False
) -> torch.Tensor:
    """Squared Euclidean distance (in pixels²) of every voxel to the nearest voxel of a set.

    Separable and exact: ``d² = min_dz [dz² + min_dy [dy² + min_dx [dx² + (0 on the set, else
    ∞)]]]`` over offsets up to ``r = ceil(max_distance)``, in small integers (values above
    ``r²`` are held at ``r² + 1``, which cannot lower a distance ``<= r²``).

    Parameters
    ----------
    binary
        ``(D, H, W)`` bool, the set.
    max_distance
        Distances up to this value (pixels) are exact; farther voxels get ``r² + 1``
        (``> max_distance²``).
    periodic
        The array wraps around at its faces (as a DFT convolution would); ``r`` must then not
        exceed its size along any axis.

    Returns
    -------
    torch.Tensor
        ``(D, H, W)`` float64; 0 on the set.
    """
    r = int(math.ceil(max(float(max_distance), 0.0)))
    cap = r * r + 1
    dtype = torch.uint8 if 2 * cap <= 255 else torch.int32
    d2 = torch.full(binary.shape, cap, dtype=dtype, device=binary.device).masked_fill_(binary, 0)
    for axis in range(3):
        d2 = _min_plus_squares(d2, axis, r, cap, periodic)
    return d2.to(torch.float64)


def _min_plus_squares(d2: torch.Tensor, axis: int, r: int, cap: int, periodic: bool):
    """``min_o (d2[i + o] + o²)`` over ``|o| <= r`` along ``axis``, held at ``cap``."""
    n = d2.shape[axis]
    if periodic and r > n:
        raise ValueError(f"distance {r} exceeds the size {n} of a periodic axis")
    if periodic:
        before, after = d2.narrow(axis, n - r, r), d2.narrow(axis, 0, r)
    else:
        shape = list(d2.shape)
        shape[axis] = r
        before = after = torch.full(shape, cap, dtype=d2.dtype, device=d2.device)
    padded = torch.cat([before, d2, after], dim=axis)
    best = d2.clone()
    term = torch.empty_like(d2)
    for off in range(1, r + 1):
        for start in (r - off, r + off):
            torch.add(padded.narrow(axis, start, n), off * off, out=term)
            torch.minimum(best, term, out=best)
    return best.clamp_(max=cap)


def create_mask(
    volume,
    pixel_size: float,
    threshold: float,
    *,
    extend_px: float = 3.0,
    soft_edge_px: float = 6.0,
    lowpass_angstrom: float | None = 15.0,
) -> torch.Tensor:
    """A soft solvent mask from a map, as ``relion_mask_create`` makes it (see the module notes).

    Parameters
    ----------
    volume
        ``(N, N, N)`` map (e.g. the average of the two half maps).
    pixel_size
        Å per pixel (for the low-pass).
    threshold
        Binarisation threshold on the low-passed map (RELION's ``--ini_threshold``).
    extend_px
        Extension of the binary mask in pixels (``--extend_inimask``; negative shrinks).
    soft_edge_px
        Width of the raised-cosine edge in pixels (``--width_soft_edge``).
    lowpass_angstrom
        Low-pass before thresholding, in Å (``--lowpass``); ``None`` or ``<= 0``: none.

    Returns
    -------
    torch.Tensor
        ``(N, N, N)`` float64 mask in ``[0, 1]``.

    Raises
    ------
    CryogradError
        ``threshold`` leaves no voxel in the mask, or a parameter is out of range.
    """
    v = torch.as_tensor(volume).to(torch.float64)
    if v.ndim != 3:
        raise CryogradError(f"volume must be a 3D map, got shape {tuple(v.shape)}")
    if not soft_edge_px >= 0:
        raise CryogradError(f"soft_edge_px must be >= 0, got {soft_edge_px}")
    if lowpass_angstrom is not None and lowpass_angstrom > 0:
        v = lowpass_map(v, lowpass_angstrom, pixel_size)
    binary = v >= float(threshold)
    if not bool(binary.any()):
        raise CryogradError(
            f"threshold {threshold:g} lies above every voxel of the low-passed map "
            f"(maximum {float(v.max()):.4g}): the mask would be empty"
        )
    ext = float(extend_px)
    if ext > 0:
        binary = binary | (squared_distance_to_set(binary, ext) < ext * ext)
    elif ext < 0:
        binary = binary & ~(squared_distance_to_set(~binary, -ext) < ext * ext)
        if not bool(binary.any()):
            raise CryogradError(f"extend_px {ext:g} shrinks the mask to nothing")
    mask = binary.to(torch.float64)
    w = float(soft_edge_px)
    if w > 0:
        d2 = squared_distance_to_set(binary, w)
        edge = (~binary) & (d2 < w * w)
        soft = 0.5 + 0.5 * torch.cos(math.pi * torch.sqrt(d2.clamp(max=w * w)) / w)
        mask = torch.where(edge, soft, mask)
    return mask


def sphere_mask(
    box: int, radius_px: float, edge_px: float, center=None, *, device=None
) -> torch.Tensor:
    """RELION's ``raisedCosineMask``: 1 inside ``radius_px``, 0 beyond ``radius_px + edge_px``,
    ``0.5 - 0.5 cos(π (radius_px + edge_px - d) / edge_px)`` between; ``d`` from ``center``
    (``(z, y, x)`` voxel, default the box centre ``N // 2``). Returns ``(N, N, N)`` float64."""
    c = (box // 2,) * 3 if center is None else tuple(float(x) for x in center)
    idx = torch.arange(box, device=device, dtype=torch.float64)
    d = torch.sqrt(
        (idx.view(-1, 1, 1) - c[0]) ** 2
        + (idx.view(1, -1, 1) - c[1]) ** 2
        + (idx.view(1, 1, -1) - c[2]) ** 2
    )
    return raised_cosine_profile(d, radius_px, edge_px)


def raised_cosine_profile(d: torch.Tensor, radius_px: float, edge_px: float) -> torch.Tensor:
    """The radial profile of :func:`sphere_mask` at distances ``d`` (any shape, pixels)."""
    outer = float(radius_px) + float(edge_px)
    if edge_px > 0:
        soft = 0.5 - 0.5 * torch.cos(math.pi * (outer - d) / float(edge_px))
    else:
        soft = torch.zeros_like(d)
    out = torch.where(d < radius_px, torch.ones_like(d), soft)
    return torch.where(d > outer, torch.zeros_like(d), out)
