"""Projectors: matched pairs ``T C P`` / ``Pᵀ Cᵀ Tᵀ`` as objects, one package per projector.

- :mod:`cryograd.projectors.base`: the :class:`Projector` protocol, :class:`ImageFilters` (CTF and
  shifts), the chunk loop shared by all projectors.
- :mod:`cryograd.projectors.backend`: :func:`select_backend`, the one decision torch / Triton /
  compiled CPU loops (``CRYOGRAD_KERNELS``, the device, what is installed).
- :mod:`cryograd.projectors.fourier_slice`: padded 3D FFT, trilinear central slices on the half
  grid, inverse 2D FFT; its exact transpose; the gridding correction; Fourier insertion.
- :mod:`cryograd.projectors.real_space`: voxel-driven bilinear splatting and its exact transpose.
- :mod:`cryograd.projectors.registry`: :data:`PROJECTORS` by name, :func:`make_projector`.

Both make line integrals in voxel units, so their images agree.
"""

from cryograd.projectors import fourier_slice, real_space
from cryograd.projectors.backend import select_backend
from cryograd.projectors.base import ChunkedProjector, ImageFilters, Projector
from cryograd.projectors.fourier_slice import FourierSliceProjector
from cryograd.projectors.real_space import RealSpaceProjector
from cryograd.projectors.registry import PROJECTORS, make_projector

__all__ = [
    "fourier_slice",
    "real_space",
    "select_backend",
    "Projector",
    "ChunkedProjector",
    "ImageFilters",
    "FourierSliceProjector",
    "RealSpaceProjector",
    "PROJECTORS",
    "make_projector",
]
