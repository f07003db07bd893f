"""The real-space projector object, and the module-level :func:`project` / :func:`backproject`.

:class:`RealSpaceProjector` is ``T C P`` with ``P`` voxel-driven bilinear splatting
(:mod:`.geometry`); the CTF and shift are half-grid Fourier filters on the images. Backends:
``_torch.py`` (reference) and ``_triton.py`` (kernels); there are no compiled CPU loops, so
:func:`cryograd.projectors.backend.select_backend` answers ``"torch"`` on the CPU.

The real-space projector has no 3D spectrum: :meth:`RealSpaceProjector.insert` and
:meth:`RealSpaceProjector.extract` raise :class:`CryogradError` (use the Fourier-slice projector
for Fourier insertion).
"""

from __future__ import annotations

from typing import Any

import torch

from cryograd.errors import CryogradError
from cryograd.projectors.backend import kernel_batch_size, select_backend, triton_module
from cryograd.projectors.base import ChunkedProjector, ImageFilters
from cryograd.projectors.real_space import _torch
from cryograd.projectors.real_space.geometry import default_batch_size

__all__ = ["RealSpaceProjector", "project", "backproject", "steps_class"]

OP = "real_space"


def steps_class(backend: str) -> type[_torch.TorchSteps]:
    """The chunk-steps class of a backend (imports Triton only for ``"triton"``)."""
    return triton_module(OP).TritonSteps if backend == "triton" else _torch.TorchSteps


class RealSpaceProjector(ChunkedProjector):
    """Real-space (voxel-splatting) projector with CTF and shifts, on any backend.

    Parameters
    ----------
    box_size
        ``D``.
    batch_size
        Particles per chunk (default: per backend).
    """

    name = "real"

    def __init__(self, box_size: int, *, batch_size: int | None = None, **_ignored: Any) -> None:
        self.box_size = int(box_size)
        self.batch_size = None if batch_size is None else max(1, int(batch_size))

    def backend(self, device: torch.device | str) -> str:
        """The backend that runs on ``device`` (:func:`select_backend`)."""
        return select_backend(device, OP)

    def default_batch_size(self, backend: str) -> int:
        """Particles per chunk on ``backend`` when none was given."""
        if backend == "triton":
            return kernel_batch_size(self.box_size)
        return default_batch_size(self.box_size)

    def steps(self, device: torch.device | str) -> _torch.TorchSteps:
        backend = self.backend(device)
        return steps_class(backend)(
            self.box_size, self.batch_size or self.default_batch_size(backend)
        )

    def extract(
        self, spectrum: torch.Tensor, rotations: torch.Tensor, filters: ImageFilters | None = None
    ) -> torch.Tensor:
        """Not defined for the real-space projector (it has no 3D spectrum)."""
        raise CryogradError(
            "the real-space projector has no Fourier slice extraction; use projector 'fourier'"
        )

    def insert(
        self,
        spectra: torch.Tensor,
        rotations: torch.Tensor,
        accumulator: torch.Tensor,
        weights: torch.Tensor | None = None,
        **filters: Any,
    ) -> None:
        """Not defined for the real-space projector (it has no 3D spectrum)."""
        raise CryogradError(
            "the real-space projector has no Fourier insertion; use projector 'fourier'"
        )


def project(
    volume: torch.Tensor, rotations: torch.Tensor, *, batch_size: int | None = None
) -> torch.Tensor:
    """Line-integral projections ``(B, D, D)`` of a ``(D, D, D)`` volume by voxel splatting
    (no CTF, no shift): :meth:`RealSpaceProjector.project`."""
    if volume.dim() != 3 or len(set(volume.shape)) != 1:
        raise CryogradError(
            f"real-space projection: volume must be cubic (D, D, D), got {tuple(volume.shape)}"
        )
    proj = RealSpaceProjector(volume.shape[-1], batch_size=batch_size)
    return proj.project(volume, torch.as_tensor(rotations))


def backproject(
    images: torch.Tensor, rotations: torch.Tensor, *, batch_size: int | None = None
) -> torch.Tensor:
    """Exact transpose of :func:`project`: ``(B, D, D)`` images -> ``(D, D, D)``."""
    if images.dim() != 3 or images.shape[-1] != images.shape[-2]:
        raise CryogradError(
            "real-space back-projection: images must have shape (B, D, D), got "
            f"{tuple(images.shape)}"
        )
    proj = RealSpaceProjector(images.shape[-1], batch_size=batch_size)
    return proj.backproject(images, torch.as_tensor(rotations))
