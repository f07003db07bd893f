"""Torch reference of the real-space projector: splatting with ``index_add_`` and its transpose.

:func:`project_geometry` spreads every voxel over its 4 bilinear pixels of an enlarged buffer
(:mod:`.geometry`); :func:`backproject_geometry` gathers them back. The CTF and shift act on the
images by a half-grid Fourier filter (:func:`fourier_filter`).
"""

from __future__ import annotations

import torch

from cryograd.fourier import irfft2_centered, rfft2_centered
from cryograd.projectors.base import ImageFilters
from cryograd.projectors.fourier_slice.geometry import hermitian_part_rfft
from cryograd.projectors.real_space.geometry import (
    RealSpaceGeometry,
    crop_slice,
    real_space_geometry,
)

__all__ = ["project_geometry", "backproject_geometry", "fourier_filter", "TorchSteps"]


def fourier_filter(images: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """``irfft2(herm(filt · rfft2(images)))`` for ``(b, N, N)`` images and ``(b, N, N // 2 + 1)``
    filters.

    Its exact transpose is ``fourier_filter(images, conj(filt))``.
    """
    n = images.shape[-1]
    return irfft2_centered(hermitian_part_rfft(rfft2_centered(images) * filt, n, 2), n)


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
    s = crop_slice(geom)
    return images[:, s, s].contiguous()


def backproject_geometry(images: torch.Tensor, geom: RealSpaceGeometry) -> torch.Tensor:
    """Exact transpose of :func:`project_geometry`: ``(b, D, D)`` images to a ``(D, D, D)``
    volume."""
    b, side, n = geom.batch, geom.buffer_size, geom.box_size
    buf = torch.zeros(b * side * side + side + 2, dtype=images.dtype, device=images.device)
    s = crop_slice(geom)
    buf[: b * side * side].view(b, side, side)[:, s, s] = images
    g00 = buf.index_select(0, geom.base)
    g01 = buf[1:].index_select(0, geom.base)
    g10 = buf[side:].index_select(0, geom.base)
    g11 = buf[side + 1 :].index_select(0, geom.base)
    gy0 = g01.sub_(g00).mul_(geom.fx).add_(g00)  # g00 + fx (g01 - g00)
    gy1 = g11.sub_(g10).mul_(geom.fx).add_(g10)
    vals = gy1.sub_(gy0).mul_(geom.fy).add_(gy0)  # gy0 + fy (gy1 - gy0)
    return vals.view(b, n, n, n).sum(0)


class TorchSteps:
    """Chunk steps of the real-space projector on the torch reference backend.

    Subclasses replace :meth:`geometry`, :meth:`raw_project` and :meth:`raw_backproject`.
    """

    def __init__(self, box_size: int, batch_size: int) -> None:
        self.box_size = box_size
        self.batch_size = batch_size

    def geometry(self, rotations: torch.Tensor):
        return real_space_geometry(rotations, self.box_size)

    def raw_project(self, volume: torch.Tensor, geom) -> torch.Tensor:
        """Unfiltered projections ``(b, D, D)``."""
        return project_geometry(volume, geom)

    def raw_backproject(self, images: torch.Tensor, geom) -> torch.Tensor:
        """Transpose of :meth:`raw_project`: ``(D, D, D)``."""
        return backproject_geometry(images, geom)

    def prepare(self, volume: torch.Tensor) -> torch.Tensor:
        return volume

    def project(self, state: torch.Tensor, geom, filters: ImageFilters) -> torch.Tensor:
        proj = self.raw_project(state, geom)
        filt = filters.half_grid(self.box_size, state.device, state.dtype)
        return proj if filt is None else fourier_filter(proj, filt)

    def new_accumulator(self, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros((self.box_size,) * 3)

    def backproject(self, images, geom, filters: ImageFilters, acc: torch.Tensor) -> None:
        filt = filters.half_grid(self.box_size, images.device, images.dtype)
        if filt is not None:
            images = fourier_filter(images, torch.conj(filt))
        acc += self.raw_backproject(images, geom)

    def finish(self, acc: torch.Tensor) -> torch.Tensor:
        return acc
