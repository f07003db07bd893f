"""What a projector is: the :class:`Projector` protocol, the image filters, the one chunk driver.

A projector maps a ``(D, D, D)`` volume to ``(B, D, D)`` images, ``T C P x`` (projection ``P``,
CTF ``C``, shift ``T`` by ``-origin``), and back with the exact transpose. It is an object that
holds its own parameters (box size, padding, gridding, chunk size) and, per call, asks
:func:`cryograd.projectors.backend.select_backend` which backend runs on the data's device; the
backend supplies only the inner step of each chunk (:class:`ProjectorSteps`); the loop over chunks
is :class:`ChunkedProjector`'s, for every projector and backend.

Fourier insertion and extraction (``insert`` / ``extract``) are the Fourier-slice projector's
per-particle 2D spectrum <-> 3D spectrum maps. The real-space projector has no 3D spectrum: it
raises :class:`~cryograd.errors.CryogradError` there (decided: a solver that needs Fourier
insertion needs the Fourier-slice projector; it cannot silently get a different operator).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch

from cryograd.ctf import CTFParams, ctf_2d
from cryograd.errors import CryogradError
from cryograd.optics.particles import ParticleOptics
from cryograd.shift import phase_ramp

__all__ = ["ImageFilters", "Projector", "ProjectorSteps", "ChunkedProjector", "chunks"]


@dataclass(frozen=True)
class ImageFilters:
    """CTF and shifts of a batch of ``B`` particles (``C`` and ``T`` of the forward model).

    Attributes
    ----------
    ctf
        None, :class:`CTFParams` of ``B`` particles, or CTF values ``(B, D, D // 2 + 1)``.
    shifts_px
        None or ``(B, 2)`` RELION origins in pixels (the projection moves by ``-origin``).
    pixel_size_angstrom
        Pixel size in Å, one or ``(B,)`` (needed with CTF parameters).
    optics
        None, or the particles' :class:`~cryograd.optics.particles.ParticleOptics`: CTF
        parameters are then evaluated at the magnified frequencies with the even-Zernike offset
        (CTF *values* must already be), the filter gains ``keep · exp(+iφ)`` (odd aberrations)
        and the slices are taken at :meth:`slice_matrices`.
    """

    ctf: CTFParams | torch.Tensor | None = None
    shifts_px: torch.Tensor | None = None
    pixel_size_angstrom: float | torch.Tensor | None = None
    optics: ParticleOptics | None = None

    @property
    def empty(self) -> bool:
        """Whether there is neither CTF nor shift nor optics (the filter is 1)."""
        return self.ctf is None and self.shifts_px is None and self.optics is None

    def slice_matrices(self, rotations: torch.Tensor) -> torch.Tensor:
        """The matrices the slice geometry takes: ``rotations``, or with optics
        :meth:`ParticleOptics.slice_matrices` (magnification, pixel-size rescaling)."""
        return rotations if self.optics is None else self.optics.slice_matrices(rotations)

    def chunk(self, sl: slice) -> ImageFilters:
        """The filters of particles ``sl``."""
        apix = self.pixel_size_angstrom
        if isinstance(apix, torch.Tensor) and apix.numel() > 1:
            apix = apix[sl]
        return replace(
            self,
            ctf=None if self.ctf is None else self.ctf[sl],
            shifts_px=None if self.shifts_px is None else self.shifts_px[sl],
            pixel_size_angstrom=apix,
            optics=None if self.optics is None else self.optics.chunk(sl),
        )

    def ctf_values(self, box_size: int, device, dtype) -> torch.Tensor | None:
        """CTF on the half grid, ``(B, D, D // 2 + 1)``, or None."""
        ctf = self.ctf
        if ctf is None or not isinstance(ctf, CTFParams):
            return None if ctf is None else ctf.to(device=device, dtype=dtype)
        if self.optics is not None:
            return self.optics.ctf_values(ctf, box_size, device=device, dtype=dtype)
        apix = torch.as_tensor(self.pixel_size_angstrom, dtype=torch.float64).reshape(-1)
        if apix.numel() == 1 or bool((apix == apix[0]).all()):
            return ctf_2d(ctf, box_size, float(apix[0]), device=device, dtype=dtype)
        out = torch.empty((len(ctf), box_size, box_size // 2 + 1), device=device, dtype=dtype)
        for value in torch.unique(apix):
            idx = torch.nonzero(apix == value).squeeze(1)
            sub = ctf[idx.to(ctf.defocus_u_angstrom.device)]
            out[idx.to(device)] = ctf_2d(sub, box_size, float(value), device=device, dtype=dtype)
        return out

    def half_grid(self, box_size: int, device, dtype) -> torch.Tensor | None:
        """``ramp(-origin) · CTF · keep · exp(+iφ)`` on the half grid, ``(B, D, D // 2 + 1)``, or
        None (no filter); the last two factors only with :attr:`optics`."""
        filt = self.ctf_values(box_size, device, dtype)
        if self.shifts_px is not None:
            shifts = self.shifts_px.to(device=device, dtype=dtype)
            ramp = phase_ramp(-shifts, box_size, dtype=dtype)
            filt = ramp if filt is None else ramp * filt
        if self.optics is not None:
            factor = self.optics.image_factor(box_size, device=device, dtype=dtype)
            filt = factor if filt is None else filt * factor
        return filt


class ProjectorSteps(Protocol):
    """The per-chunk inner steps of one projector on one backend (what the chunk loop calls)."""

    batch_size: int

    def prepare(self, volume: torch.Tensor) -> Any:
        """Per-volume state shared by all chunks (e.g. the padded spectrum)."""

    def geometry(self, rotations: torch.Tensor) -> Any:
        """Geometry of a chunk ``(b, 3, 3)``, shared by :meth:`project` and :meth:`backproject`."""

    def project(self, state: Any, geom: Any, filters: ImageFilters) -> torch.Tensor:
        """``T C P`` of a chunk: ``(b, D, D)`` images."""

    def new_accumulator(self, like: torch.Tensor) -> torch.Tensor:
        """A zero accumulator for :meth:`backproject` (device and dtype of ``like``)."""

    def backproject(
        self, images: torch.Tensor, geom: Any, filters: ImageFilters, acc: torch.Tensor
    ) -> None:
        """Add ``Pᵀ Cᵀ Tᵀ`` of a chunk's ``(b, D, D)`` images into ``acc``."""

    def finish(self, acc: torch.Tensor) -> torch.Tensor:
        """The ``(D, D, D)`` volume of an accumulator."""


@runtime_checkable
class Projector(Protocol):
    """A matched projector pair with CTF and shifts (``T C P`` and its exact transpose)."""

    box_size: int

    def steps(self, device: torch.device | str) -> ProjectorSteps:
        """The chunk steps of the backend chosen for ``device``."""

    def project(
        self, volume: torch.Tensor, rotations: torch.Tensor, filters: ImageFilters | None = None
    ) -> torch.Tensor:
        """``(D, D, D)`` volume -> ``(B, D, D)`` images ``T C P x``."""

    def backproject(
        self, images: torch.Tensor, rotations: torch.Tensor, filters: ImageFilters | None = None
    ) -> torch.Tensor:
        """Exact transpose of :meth:`project`: ``(B, D, D)`` images -> ``(D, D, D)``."""

    def extract(
        self, spectrum: torch.Tensor, rotations: torch.Tensor, filters: ImageFilters | None = None
    ) -> torch.Tensor:
        """Filtered central slices ``(B, D, D // 2 + 1)`` of a padded 3D spectrum."""

    def insert(
        self,
        spectra: torch.Tensor,
        rotations: torch.Tensor,
        accumulator: torch.Tensor,
        weights: torch.Tensor | None = None,
        **filters: Any,
    ) -> None:
        """Add filtered 2D spectra (and their CTF² weights) into 3D accumulators, in place."""


def chunks(n: int, step: int) -> Iterator[slice]:
    """Consecutive slices of ``step`` items covering ``range(n)``."""
    for start in range(0, n, max(1, int(step))):
        yield slice(start, start + step)


class ChunkedProjector:
    """The chunk loop shared by every projector: subclasses supply :meth:`steps` only."""

    box_size: int

    def __init__(self, box_size: int, **options: Any) -> None:  # pragma: no cover - subclasses
        self.box_size = int(box_size)

    def default_batch_size(self, backend: str) -> int:  # pragma: no cover - subclasses
        """Particles per chunk on ``backend`` when no batch size was given."""
        raise NotImplementedError

    def steps(self, device: torch.device | str) -> ProjectorSteps:  # pragma: no cover
        raise NotImplementedError

    #: Whether the projector's geometry takes non-orthogonal slice matrices (magnification,
    #: another pixel size): the Fourier-slice projector's does, the real-space one's does not.
    takes_slice_matrices = False

    def _matrices(self, rotations: torch.Tensor, filters: ImageFilters) -> torch.Tensor:
        if filters.optics is not None and filters.optics.changes_geometry:
            if not self.takes_slice_matrices:
                raise CryogradError(
                    "anisotropic magnification and optics groups of another pixel size need "
                    "the Fourier-slice projector (--projector fourier)"
                )
        return filters.slice_matrices(rotations)

    def project(
        self,
        volume: torch.Tensor,
        rotations: torch.Tensor,
        filters: ImageFilters | None = None,
        *,
        steps: ProjectorSteps | None = None,
    ) -> torch.Tensor:
        """``T C P x``: ``(D, D, D)`` -> ``(B, D, D)``, chunk by chunk, in the volume's dtype.

        ``steps`` forces a backend's steps (default: :meth:`steps` of the volume's device).
        """
        filters = filters or ImageFilters()
        steps = steps or self.steps(volume.device)
        state = steps.prepare(volume)
        rotations = rotations.to(device=volume.device, dtype=volume.dtype)
        d = self.box_size
        out = [volume.new_zeros((0, d, d))]
        for sl in chunks(rotations.shape[0], steps.batch_size):
            chunk_filters = filters.chunk(sl)
            geom = steps.geometry(self._matrices(rotations[sl], chunk_filters))
            out.append(steps.project(state, geom, chunk_filters))
        return torch.cat(out)

    def backproject(
        self,
        images: torch.Tensor,
        rotations: torch.Tensor,
        filters: ImageFilters | None = None,
        *,
        steps: ProjectorSteps | None = None,
    ) -> torch.Tensor:
        """Exact transpose of :meth:`project`: ``(B, D, D)`` -> ``(D, D, D)``."""
        filters = filters or ImageFilters()
        steps = steps or self.steps(images.device)
        rotations = rotations.to(device=images.device, dtype=images.dtype)
        acc = steps.new_accumulator(images)
        for sl in chunks(rotations.shape[0], steps.batch_size):
            chunk_filters = filters.chunk(sl)
            geom = steps.geometry(self._matrices(rotations[sl], chunk_filters))
            steps.backproject(images[sl], geom, chunk_filters, acc)
        return steps.finish(acc)

    def data_gradient(
        self,
        volume: torch.Tensor,
        images: torch.Tensor,
        rotations: torch.Tensor,
        filters: ImageFilters | None = None,
        *,
        steps: ProjectorSteps | None = None,
    ) -> tuple[torch.Tensor, float]:
        """``(Aᵀ (A x − b), ½ ||A x − b||²)`` with ``A = T C P``, one geometry per chunk."""
        filters = filters or ImageFilters()
        steps = steps or self.steps(volume.device)
        state = steps.prepare(volume)
        acc = steps.new_accumulator(volume)
        # summed on the device (no host sync per chunk), in float64
        loss = torch.zeros((), device=volume.device, dtype=torch.float64)
        for sl in chunks(rotations.shape[0], steps.batch_size):
            chunk_filters = filters.chunk(sl)
            geom = steps.geometry(self._matrices(rotations[sl], chunk_filters))
            resid = steps.project(state, geom, chunk_filters) - images[sl]
            loss += 0.5 * (resid * resid).sum().double()
            steps.backproject(resid, geom, chunk_filters, acc)
        return steps.finish(acc), float(loss)
