"""Voxel-driven real-space projector and its exact transpose.

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

from cryograd import kernels

__all__ = [
    "RealSpaceGeometry",
    "real_space_geometry",
    "project_geometry",
    "backproject_geometry",
    "project",
    "backproject",
    "default_batch_size",
]

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
    base = None
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
    offset = torch.arange(b, device=rot.device, dtype=index_dtype) * (side * side)
    base = base.add_(offset.view(b, 1, 1, 1)).reshape(-1)
    fx, fy = fractions
    return RealSpaceGeometry(base, fx, fy, b, n, centre, side)


def _crop_slice(geom: RealSpaceGeometry) -> slice:
    start = geom.centre - geom.box_size // 2
    return slice(start, start + geom.box_size)


def project_geometry(volume: torch.Tensor, geom: RealSpaceGeometry) -> torch.Tensor:
    """Splat ``volume`` ``(D, D, D)`` onto ``b`` images ``(b, D, D)`` with a precomputed
    geometry."""
    b, side = geom.batch, geom.buffer_size
    v = volume.reshape(1, -1)
    vy1 = (geom.fy.view(b, -1) * v).view(-1)
    vy0 = (v - vy1.view(b, -1)).view(-1)
    v01 = vy0 * geom.fx
    v11 = vy1 * geom.fx
    buf = torch.zeros(b * side * side + side + 2, dtype=volume.dtype, device=volume.device)
    buf.index_add_(0, geom.base, vy0.sub_(v01))
    buf[1:].index_add_(0, geom.base, v01)
    buf[side:].index_add_(0, geom.base, vy1.sub_(v11))
    buf[side + 1 :].index_add_(0, geom.base, v11)
    images = buf[: b * side * side].view(b, side, side)
    s = _crop_slice(geom)
    return images[:, s, s].contiguous()


def backproject_geometry(images: torch.Tensor, geom: RealSpaceGeometry) -> torch.Tensor:
    """Exact transpose of :func:`project_geometry`: ``(b, D, D)`` images to a ``(D, D, D)``
    volume."""
    b, side, n = geom.batch, geom.buffer_size, geom.box_size
    buf = torch.zeros(b * side * side + side + 2, dtype=images.dtype, device=images.device)
    s = _crop_slice(geom)
    buf[: b * side * side].view(b, side, side)[:, s, s] = images
    g00 = buf.index_select(0, geom.base)
    g01 = buf[1:].index_select(0, geom.base)
    g10 = buf[side:].index_select(0, geom.base)
    g11 = buf[side + 1 :].index_select(0, geom.base)
    gy0 = g01.sub_(g00).mul_(geom.fx).add_(g00)  # g00 + fx (g01 - g00)
    gy1 = g11.sub_(g10).mul_(geom.fx).add_(g10)
    vals = gy1.sub_(gy0).mul_(geom.fy).add_(gy0)  # gy0 + fy (gy1 - gy0)
    return vals.view(b, n, n, n).sum(0)


def project(
    volume: torch.Tensor, rotations: torch.Tensor, *, batch_size: int | None = None
) -> torch.Tensor:
    """Line-integral projections of a volume by voxel splatting.

    Parameters
    ----------
    volume
        ``(D, D, D)`` real, ``[z, y, x]``, centre at ``D // 2``.
    rotations
        ``(B, 3, 3)`` RELION ``A``.
    batch_size
        Particles per chunk (default :func:`default_batch_size`).

    Returns
    -------
    torch.Tensor
        ``(B, D, D)`` images, ``[y, x]``, in the dtype of ``volume``.

    Notes
    -----
    CUDA tensors (or any, with ``CRYOGRAD_KERNELS=triton``) run the Triton kernel
    :func:`cryograd.kernels.real_space.project` (:func:`cryograd.kernels.use_kernels`).
    """
    if kernels.use_kernels(volume):
        return kernels.real_space.project(volume, rotations, batch_size=batch_size)
    n = volume.shape[-1]
    rotations = rotations.to(device=volume.device, dtype=volume.dtype)
    step = batch_size or default_batch_size(n)
    out = []
    for start in range(0, rotations.shape[0], step):
        geom = real_space_geometry(rotations[start : start + step], n)
        out.append(project_geometry(volume, geom))
    if not out:
        return volume.new_zeros((0, n, n))
    return torch.cat(out)


def backproject(
    images: torch.Tensor, rotations: torch.Tensor, *, batch_size: int | None = None
) -> torch.Tensor:
    """Exact transpose of :func:`project`: ``(B, D, D)`` images to a ``(D, D, D)`` volume.

    Dispatches like :func:`project` (Triton :func:`cryograd.kernels.real_space.backproject`).
    """
    if kernels.use_kernels(images):
        return kernels.real_space.backproject(images, rotations, batch_size=batch_size)
    n = images.shape[-1]
    rotations = rotations.to(device=images.device, dtype=images.dtype)
    step = batch_size or default_batch_size(n)
    out = images.new_zeros((n, n, n))
    for start in range(0, rotations.shape[0], step):
        geom = real_space_geometry(rotations[start : start + step], n)
        out += backproject_geometry(images[start : start + step], geom)
    return out
