"""The Fourier-slice projector object, and the module-level functions built on it.

:class:`FourierSliceProjector` is ``T C P`` with ``P`` = gridding correction, padded 3D FFT,
trilinear central slices, inverse 2D FFT (:mod:`.geometry` has the maths); its ``insert`` is the
CTF-weighted Fourier insertion of the ``direct`` solver. Each call runs the backend that
:func:`cryograd.projectors.backend.select_backend` chooses for the data's device: ``_torch.py``,
``_cpu.py`` (compiled loops) or ``_triton.py`` (fused kernels), all behind the one chunk loop of
:class:`cryograd.projectors.base.ChunkedProjector`.
"""

from __future__ import annotations

import torch

from cryograd.ctf import CTFParams
from cryograd.errors import CryogradError
from cryograd.optics.particles import ParticleOptics
from cryograd.projectors.backend import kernel_batch_size, select_backend, triton_module
from cryograd.projectors.base import ChunkedProjector, ImageFilters
from cryograd.projectors.fourier_slice import _cpu, _torch
from cryograd.projectors.fourier_slice.geometry import (
    ExtendedSpectrum,
    SliceGeometry,
    default_batch_size,
    padded_size,
    slice_geometry,
)
from cryograd.shift import phase_ramp

__all__ = [
    "FourierSliceProjector",
    "project",
    "backproject",
    "extract_slices",
    "insert_slices",
    "steps_class",
]

OP = "fourier_slice"


def steps_class(backend: str) -> type[_torch.TorchSteps]:
    """The chunk-steps class of a backend (imports Triton only for ``"triton"``)."""
    if backend == "triton":
        return triton_module(OP).TritonSteps
    return _cpu.CpuSteps if backend == "cpu" else _torch.TorchSteps


class FourierSliceProjector(ChunkedProjector):
    """Fourier-slice projector with CTF and shifts, on any backend.

    Parameters
    ----------
    box_size
        ``D``.
    pad
        Padding factor of the 3D transform (``P`` = :func:`padded_size`).
    gridding
        Apply the gridding correction (divide by the trilinear window) in both directions.
    batch_size
        Particles per chunk (default: per backend; larger for the kernels, which hold no
        per-sample geometry).
    """

    name = "fourier"
    takes_slice_matrices = True

    def __init__(
        self,
        box_size: int,
        *,
        pad: float = 2.0,
        gridding: bool = True,
        batch_size: int | None = None,
    ) -> None:
        self.box_size = int(box_size)
        self.pad = float(pad)
        self.padded_size = padded_size(self.box_size, self.pad)
        self.gridding = bool(gridding)
        self.batch_size = None if batch_size is None else max(1, int(batch_size))

    def default_batch_size(self, backend: str) -> int:
        """Particles per chunk on ``backend`` when none was given."""
        if backend == "triton":
            return kernel_batch_size(self.box_size)
        return default_batch_size(self.box_size)

    def backend(self, device: torch.device | str) -> str:
        """The backend that runs on ``device`` (:func:`select_backend`)."""
        return select_backend(device, OP)

    def steps(self, device: torch.device | str) -> _torch.TorchSteps:
        backend = self.backend(device)
        size = self.batch_size or self.default_batch_size(backend)
        return steps_class(backend)(self.box_size, self.padded_size, self.gridding, size)

    def new_accumulators(
        self, device: torch.device | str, dtype: torch.dtype, *, packed: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Zero accumulators for :meth:`insert`: flat extended complex values, real weights.

        With ``packed`` and the compiled CPU loops: one packed grid of ``(re, im, weight)``
        cells and None (:meth:`ExtendedSpectrum.zeros_packed`; the same memory, a sample's
        values and weights in the same cache lines). :meth:`fold_accumulators` reads either.
        """
        if packed and self.backend(device) == "cpu" and dtype in (torch.float32, torch.float64):
            return ExtendedSpectrum.zeros_packed(self.padded_size, device=device, dtype=dtype), None
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        num = ExtendedSpectrum.zeros(self.padded_size, device=device, dtype=cdtype)
        return num, torch.zeros(num.shape, device=device, dtype=dtype)

    def fold_accumulators(
        self, accumulator: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(P, P, P // 2 + 1)`` complex values and real weights of :meth:`new_accumulators`'
        grids (``weights`` None and ``accumulator`` complex: None for the weights)."""
        p = self.padded_size
        if not accumulator.is_complex():
            if _cpu.usable(accumulator) and accumulator.is_contiguous():
                return _cpu.fold_packed(accumulator, p)  # on all threads
            return ExtendedSpectrum.fold_packed(accumulator, p)
        num = ExtendedSpectrum.fold(accumulator, p)
        if weights is None:
            return num, None
        w = ExtendedSpectrum.fold(weights, p)
        return num, (w.real if w.is_complex() else w).contiguous()

    def extract(
        self, spectrum: torch.Tensor, rotations: torch.Tensor, filters: ImageFilters | None = None
    ) -> torch.Tensor:
        """``ramp(-origin) · CTF · slice``: ``(B, D, D // 2 + 1)`` central slices of a padded
        spectrum ``(P, P, P // 2 + 1)`` (or its flat extended layout)."""
        ext = spectrum if spectrum.dim() == 1 else ExtendedSpectrum.from_spectrum(spectrum)
        steps = self.steps(ext.device)
        filters = filters or ImageFilters()
        rot = filters.slice_matrices(rotations.to(device=ext.device, dtype=ext.real.dtype))
        return steps.extract(ext, steps.geometry(rot), filters)

    def insert(
        self,
        spectra: torch.Tensor,
        rotations: torch.Tensor,
        accumulator: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        ctf: CTFParams | torch.Tensor | None = None,
        shifts_px: torch.Tensor | None = None,
        pixel_size_angstrom: float | torch.Tensor | None = None,
        premultiplied: torch.Tensor | None = None,
        sample_weights: torch.Tensor | None = None,
        symmetry: torch.Tensor | None = None,
        optics: ParticleOptics | None = None,
    ) -> None:
        """CTF-weighted Fourier insertion of one batch (the ``direct`` solver's step), in place.

        Adds ``Sᵀ(w · c · ramp(+origin) · spectra)`` into ``accumulator`` and ``Sᵀ(w · c²)`` into
        ``weights`` (``S`` the central-slice sampling at each pose, ``c`` the CTF, 1 for the
        values of ``premultiplied`` particles and 1 everywhere without CTF, ``w`` the
        ``sample_weights``).

        Parameters
        ----------
        spectra
            ``(b, D, D // 2 + 1)`` complex ``rfft2_centered`` of the images.
        rotations
            ``(b, 3, 3)`` RELION ``A``.
        accumulator, weights
            Flat extended accumulators (:meth:`new_accumulators`): complex values and real (or
            complex) weights, contiguous, on the spectra's device; ``weights`` may be None. On
            the compiled CPU loops also a packed accumulator (``weights`` None).
        ctf
            None, :class:`CTFParams` of ``b`` particles, or values ``(b, D, D // 2 + 1)``.
        shifts_px
            None or ``(b, 2)`` origins in pixels.
        pixel_size_angstrom
            Pixel size in Å, one or ``(b,)`` (with CTF parameters).
        premultiplied
            None or ``(b,)`` bool: those images already carry their CTF.
        sample_weights
            None or real factors broadcastable to ``(D, D // 2 + 1)`` (the ½ on the ``kx = 0``
            column, a resolution mask).
        symmetry
            None or ``(G, 3, 3)`` operators: each particle is also inserted at ``A Rᵀ``.
        optics
            None or the particles' :class:`~cryograd.optics.particles.ParticleOptics`: the
            spectra are demodulated (``exp(−iφ)``), the CTF is RELION's with the observation
            model, pixels beyond the reference Nyquist radius are left out, and the slices go
            to the magnified, rescaled positions (CTF *values* must already include the optics).
        """
        backend = self.backend(accumulator.device)
        filters = ImageFilters(ctf, shifts_px, pixel_size_angstrom, optics)
        ops = [None] if symmetry is None else list(symmetry.to(rotations))
        rotations = filters.slice_matrices(rotations)
        if backend == "triton" and optics is None:
            kfs = triton_module(OP)
            for op in ops:
                rot = rotations if op is None else rotations @ op.transpose(-1, -2)
                kfs.insert_slices(
                    spectra,
                    rot,
                    accumulator,
                    weights=weights,
                    ctf=ctf,
                    shifts_px=shifts_px,
                    pixel_size_angstrom=pixel_size_angstrom,
                    premultiplied=premultiplied,
                    sample_weights=sample_weights,
                )
            return
        if backend == "cpu" and _fused_cpu(spectra, accumulator, weights, ctf):
            rot = rotations
            if symmetry is not None:
                rot = (rotations[:, None] @ symmetry.to(rotations).transpose(-1, -2)[None]).reshape(
                    -1, 3, 3
                )
            params = _cpu.particle_parameters(
                spectra.shape[0],
                self.box_size,
                ctf=ctf if isinstance(ctf, CTFParams) else None,
                shifts_px=shifts_px,
                pixel_size_angstrom=pixel_size_angstrom,
                premultiplied=premultiplied,
                optics=optics,
            )
            _cpu.insert_weighted(
                spectra,
                rot,
                params,
                sample_weights,
                self.padded_size,
                accumulator,
                weights,
                optics=optics,
            )
            return
        values, wts = _filtered_values(spectra, filters, premultiplied, sample_weights)
        if symmetry is not None:
            rotations = (
                rotations[:, None] @ symmetry.to(rotations).transpose(-1, -2)[None]
            ).reshape(-1, 3, 3)
            values = values.repeat_interleave(len(ops), dim=0)
            wts = wts.repeat_interleave(len(ops), dim=0)
        steps = self.steps(accumulator.device)
        geom = slice_geometry(rotations, self.box_size, self.padded_size, dtype=spectra.real.dtype)
        steps.raw_insert(values, geom, accumulator)
        if weights is not None:
            steps.raw_insert(wts.to(weights.dtype), geom, weights)


def _fused_cpu(spectra, accumulator, weights, ctf) -> bool:
    """Whether :func:`_cpu.insert_weighted` takes this insertion (contiguous grids of the
    spectra's precision, real weights, CTF as parameters or none)."""
    if not accumulator.is_complex():  # packed (re, im, weight) grid: only these loops read it
        if (ctf is not None and not isinstance(ctf, CTFParams)) or not accumulator.is_contiguous():
            raise ValueError("a packed accumulator takes CTF parameters and must be contiguous")
        return True
    if ctf is not None and not isinstance(ctf, CTFParams):
        return False
    if not accumulator.is_contiguous() or accumulator.dtype != spectra.dtype:
        return False
    if weights is None:
        return True
    return (
        weights.is_contiguous()
        and not weights.is_complex()
        and weights.dtype == accumulator.real.dtype
    )


def _filtered_values(
    spectra: torch.Tensor,
    filters: ImageFilters,
    premultiplied: torch.Tensor | None,
    sample_weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The values ``w · c · ramp(+origin) · spectra`` and weights ``w · c²`` of :meth:`insert`."""
    b, d, w = spectra.shape
    dtype = spectra.real.dtype
    if filters.shifts_px is not None:
        shifts = filters.shifts_px.to(device=spectra.device, dtype=dtype)
        spectra = spectra * phase_ramp(shifts, d, dtype=dtype)
    if filters.optics is not None:  # demodulate (exp(-i phi)) and drop pixels beyond Nyquist
        factor = filters.optics.image_factor(d, device=spectra.device, dtype=dtype)
        spectra = spectra * torch.conj(factor)
        keep = factor.abs() if factor.is_complex() else factor
        sample_weights = keep if sample_weights is None else keep * sample_weights
    ctf = filters.ctf_values(d, spectra.device, dtype)
    if ctf is None:
        wts = torch.ones((b, d, w), device=spectra.device, dtype=dtype)
    else:
        data_filter = ctf
        if premultiplied is not None and bool(torch.as_tensor(premultiplied).any()):
            pm = torch.as_tensor(premultiplied, device=spectra.device).view(-1, 1, 1)
            data_filter = torch.where(pm, torch.ones_like(ctf), ctf)
        spectra = spectra * data_filter
        wts = ctf * ctf
    if sample_weights is not None:
        sw = torch.as_tensor(sample_weights).to(device=spectra.device, dtype=dtype)
        spectra = spectra * sw
        wts = wts * sw
    return spectra, wts


def _check_volume(op: str, volume: torch.Tensor) -> None:
    if volume.dim() != 3 or len(set(volume.shape)) != 1:
        raise CryogradError(f"{op}: volume must be cubic (D, D, D), got {tuple(volume.shape)}")


def project(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    *,
    pad: float = 2.0,
    gridding: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Fourier-slice projections (line integrals, voxel units) ``(B, D, D)`` of a ``(D, D, D)``
    volume (no CTF, no shift): :meth:`FourierSliceProjector.project`."""
    _check_volume("Fourier-slice projection", volume)
    proj = FourierSliceProjector(
        volume.shape[-1], pad=pad, gridding=gridding, batch_size=batch_size
    )
    return proj.project(volume, torch.as_tensor(rotations))


def backproject(
    images: torch.Tensor,
    rotations: torch.Tensor,
    *,
    pad: float = 2.0,
    gridding: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Exact transpose of :func:`project`: ``(B, D, D)`` images -> ``(D, D, D)``."""
    if images.dim() != 3 or images.shape[-1] != images.shape[-2]:
        raise CryogradError(
            "Fourier-slice back-projection: images must have shape (B, D, D), got "
            f"{tuple(images.shape)}"
        )
    proj = FourierSliceProjector(
        images.shape[-1], pad=pad, gridding=gridding, batch_size=batch_size
    )
    return proj.backproject(images, torch.as_tensor(rotations))


def extract_slices(spectrum: torch.Tensor, geom: SliceGeometry) -> torch.Tensor:
    """Central slices ``(b, D, D // 2 + 1)`` of a padded half spectrum (no filters).

    ``spectrum`` is ``(P, P, P // 2 + 1)`` complex or its flat extended layout; ``geom`` a
    :func:`slice_geometry`. Torch or compiled loops (:func:`select_backend`; the Triton kernels
    take rotations: :func:`cryograd.projectors.fourier_slice._triton.extract_slices`).
    """
    ext = spectrum if spectrum.dim() == 1 else ExtendedSpectrum.from_spectrum(spectrum)
    return _host_steps(ext, geom).raw_extract(ext, geom)


def insert_slices(
    slices: torch.Tensor, geom: SliceGeometry, *, accumulator: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Exact transpose of :func:`extract_slices`.

    With a flat extended ``accumulator`` (:meth:`ExtendedSpectrum.zeros`, complex, or real for
    real values) the slices are added into it and nothing is returned; otherwise the
    ``(P, P, P // 2 + 1)`` spectrum is returned.
    """
    if accumulator is not None:
        _host_steps(accumulator, geom).raw_insert(slices, geom, accumulator)
        return None
    ext = ExtendedSpectrum.zeros(geom.padded, device=slices.device, dtype=slices.dtype)
    _host_steps(ext, geom).raw_insert(slices, geom, ext)
    return ExtendedSpectrum.fold(ext, geom.padded)


def _host_steps(ref: torch.Tensor, geom: SliceGeometry) -> _torch.TorchSteps:
    """Torch or compiled-loop steps for ``ref``'s device (Triton counts as torch here)."""
    real = ref.real.dtype if ref.is_complex() else ref.dtype
    use_cpu = _cpu.usable(ref) and real in (torch.float32, torch.float64)
    cls = _cpu.CpuSteps if use_cpu else _torch.TorchSteps
    return cls(geom.box_size, geom.padded, False, geom.batch)
