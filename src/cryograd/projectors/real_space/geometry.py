"""Geometry of the voxel-driven real-space projector (imports nothing else from cryograd).

Voxel ``(i, j, k)`` of a ``(D, D, D)`` volume ``[z, y, x]`` sits at ``r = (x, y, z) = (k, j, i) - D
// 2``. For a particle with RELION matrix ``A`` the voxel lands on the image at ``p = (A r)[:2] + D
// 2`` (``p = (x, y)`` in pixel units, image ``[y, x]``) and its value is spread over the 4
neighbouring pixels with bilinear weights (which sum to 1). The image is therefore the line integral
``img(x, y) = ∫ V(Aᵀ (x, y, z)) dz`` in voxel units, the same normalisation as the Fourier-slice
projector.

The back-projector is the exact transpose: every voxel gathers the same 4 pixels with the same
weights. Voxels are splatted into an enlarged image buffer (side ``E > √3 D``) that holds every
voxel's projection, so there are no bounds tests; the buffer is then cropped to ``D × D`` (and the
transpose zero-pads). Particles are processed in chunks so that memory grows as ``chunk · D³``,
never ``N · D³``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["RealSpaceGeometry", "real_space_geometry", "default_batch_size", "crop_slice"]

#: Voxel-particle pairs per chunk (each costs 16 bytes of geometry in float32).
_VOXEL_BUDGET = 1 << 23


def default_batch_size(box_size: int) -> int:
    """Particles per chunk so that a chunk holds about 8 M voxel projections."""
    return max(1, _VOXEL_BUDGET // box_size**3)


def _buffer_layout(box_size: int) -> tuple[int, int]:
    """Centre index and side of the splat buffer that holds every voxel's projection."""
    half = box_size // 2
    centre = math.ceil(math.sqrt(3.0) * half) + 2
    return centre, 2 * centre + 2


@dataclass
class RealSpaceGeometry:
    """Where every voxel lands on the images of a chunk of particles.

    Attributes
    ----------
    base
        ``(b * D³,)`` flat index (int32, or int64 for huge chunks) of the lower-left pixel in the
        ``(b, E, E)`` buffer.
    fx, fy
        ``(b * D³,)`` bilinear fractions along x and y.
    batch
        Number of particles ``b``.
    box_size
        ``D``.
    centre, buffer_size
        Buffer centre index and side ``E``.
    """

    base: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    batch: int
    box_size: int
    centre: int
    buffer_size: int


def real_space_geometry(
    rotations: torch.Tensor, box_size: int, *, dtype: torch.dtype | None = None
) -> RealSpaceGeometry:
    """Project every voxel centre of a ``D³`` volume with each rotation.

    Parameters
    ----------
    rotations
        ``(b, 3, 3)`` RELION ``A`` matrices.
    box_size
        ``D``.
    dtype
        Real dtype of the coordinates (default: that of ``rotations``).
    """
    dtype = dtype or rotations.dtype
    rot = rotations.to(dtype)
    b = rot.shape[0]
    n = box_size
    centre, side = _buffer_layout(n)
    c = torch.arange(n, device=rot.device, dtype=dtype) - n // 2  # (D,)
    # Buffer coordinates p[b, i, j, k] = A[:2, 0] c[k] + A[:2, 1] c[j] + A[:2, 2] c[i] + centre are
    # >= 1 by construction of the buffer, so truncation is floor and frac() the bilinear fraction.
    index_dtype = torch.int32 if b * side * side < 2**31 - 2 * side else torch.int64
    fractions = []
    base: torch.Tensor | None = None
    for row in range(2):
        a = rot[:, row, :]  # (b, 3)
        zy = a[:, 2, None, None] * c[:, None] + a[:, 1, None, None] * c[None, :] + centre
        p = zy[..., None] + (a[:, 0, None] * c)[:, None, None, :]  # (b, D, D, D)
        cell = p.to(index_dtype)
        fractions.append(torch.frac_(p).reshape(-1))
        if base is None:
            base = cell
        else:  # base = y0 * side + x0 + particle offset
            base = cell.mul_(side).add_(base)
    assert base is not None
    offset = torch.arange(b, device=rot.device, dtype=index_dtype) * (side * side)
    base = base.add_(offset.view(b, 1, 1, 1)).reshape(-1)
    fx, fy = fractions
    return RealSpaceGeometry(base, fx, fy, b, n, centre, side)


def crop_slice(geom: RealSpaceGeometry) -> slice:
    """The ``D`` pixels of the splat buffer that make the image, along each axis."""
    start = geom.centre - geom.box_size // 2
    return slice(start, start + geom.box_size)
