"""The image formation model ``b_i = T_i C_i P_i x`` and its exact adjoint.

``P_i`` is a projector (:mod:`cryograd.projectors`, ``"fourier"`` with its gridding correction, or
``"real"``), ``C_i`` the particle's CTF (RELION sign, :func:`cryograd.ctf.ctf_2d`) and ``T_i`` the
shift by ``-origin`` (RELION's ``rlnOriginX/Y`` in pixels, :attr:`ParticleSet.shifts_px`): the
forward model moves the centred projection by ``-origin``; back-projection moves the image by
``+origin``.

``C`` and ``T`` are diagonal on the 2D half spectrum. As real-linear maps on images,
``image -> irfft2(herm(d · rfft2(image)))``, their transposes multiply by ``conj(d)`` (the CTF is
real, so ``C`` is self-adjoint). With the Fourier-slice projector they are applied to the slice
directly, before its single inverse FFT.

:meth:`ForwardModel.project` is a :class:`torch.autograd.Function` when the volume requires a
gradient: its backward is one call of :meth:`ForwardModel.backproject`, not autograd through the
scatter.
All public methods accept torch tensors, NumPy arrays and CuPy arrays and return the kind they were
given (:mod:`cryograd.arrays`).

Backends: when :func:`cryograd.kernels.use_kernels` says so (CUDA tensors with Triton present, or
any tensor with ``CRYOGRAD_KERNELS=triton``) each chunk runs the Triton kernels, which compute the
slice geometry, the CTF and the shift ramp on the fly (:func:`cryograd.kernels.fourier_slice.
extract_slices` / ``insert_slices``, :mod:`cryograd.kernels.real_space`); otherwise the torch
reference path (with the compiled CPU slice loops of :mod:`cryograd.kernels.cpu` where built).
``CRYOGRAD_KERNELS=torch`` forces the reference. Both compute the same operator.
"""

from __future__ import annotations

from typing import Any

import torch

from cryograd import kernels
from cryograd.arrays import array_kind, from_tensor, to_tensor
from cryograd.ctf import CTFParams, ctf_2d
from cryograd.errors import CryogradError
from cryograd.fourier import rfft2_centered
from cryograd.projectors import fourier_slice as fs
from cryograd.projectors import real_space as rs
from cryograd.shift import phase_ramp

__all__ = ["ForwardModel", "fourier_filter", "apply_ctf", "apply_shift"]

#: Image samples (``D²`` per particle) per chunk on the kernel path: bounds the ``(b, D, D)`` and
#: ``(b, D, D // 2 + 1)`` temporaries only (the kernels keep no per-sample geometry).
_KERNEL_CHUNK_SAMPLES = 1 << 24


def _kernel_batch_size(box_size: int) -> int:
    """Default particles per chunk on the Triton path (about 16 M image samples)."""
    return max(1, _KERNEL_CHUNK_SAMPLES // (box_size * box_size))


def fourier_filter(images: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """``irfft2(herm(filt · rfft2(images)))`` for ``(b, N, N)`` images and ``(b, N, N // 2 + 1)``
    filters.

    Its exact transpose is ``fourier_filter(images, conj(filt))``.
    """
    n = images.shape[-1]
    return fs.spectra_to_images(rfft2_centered(images) * filt, n)


def apply_ctf(
    images: torch.Tensor, ctf: CTFParams | torch.Tensor, pixel_size_angstrom: float
) -> torch.Tensor:
    """Multiply ``(b, N, N)`` images by their CTFs in Fourier space (self-adjoint operator).

    ``ctf`` is a :class:`CTFParams` batch or precomputed half-grid values ``(b, N, N // 2 + 1)``.
    """
    n = images.shape[-1]
    if isinstance(ctf, CTFParams):
        ctf = ctf_2d(ctf, n, pixel_size_angstrom, device=images.device, dtype=images.dtype)
    return fourier_filter(images, ctf.to(device=images.device, dtype=images.dtype))


def apply_shift(
    images: torch.Tensor, shifts_px: torch.Tensor, *, adjoint: bool = False
) -> torch.Tensor:
    """Shift ``(b, N, N)`` images by ``shifts_px`` ``(b, 2)`` (``(tx, ty)``, content moves by
    ``+t``).

    With ``adjoint=True`` the exact transpose (the shift by ``-t``).
    """
    n = images.shape[-1]
    ramp = phase_ramp(shifts_px.to(device=images.device), n, dtype=images.dtype)
    return fourier_filter(images, torch.conj(ramp) if adjoint else ramp)


def _are_rotations(rot: torch.Tensor, tol: float = 1e-3) -> bool:
    """Whether ``(B, 3, 3)`` matrices are finite and orthonormal within ``tol``.

    Both projectors index their grids from ``A``; a matrix far from a rotation (or NaN) would
    send samples outside them.
    """
    eye = torch.eye(3, device=rot.device, dtype=rot.dtype)
    err = (rot @ rot.transpose(-1, -2) - eye).abs().amax()
    return bool(err <= tol)  # False for NaN/inf


class _ProjectFunction(torch.autograd.Function):
    """``project`` with ``backproject`` as its backward."""

    @staticmethod
    def forward(ctx, volume, model, rotations, shifts_px, ctf):  # noqa: D401
        ctx.model = model
        ctx.args = (rotations, shifts_px, ctf)
        return model._project(volume, rotations, shifts_px, ctf)

    @staticmethod
    def backward(ctx, grad_images):
        rotations, shifts_px, ctf = ctx.args
        grad = ctx.model._backproject(grad_images.contiguous(), rotations, shifts_px, ctf)
        return grad, None, None, None, None


class ForwardModel:
    """Image formation ``b_i = T_i C_i P_i x`` with matched projector pairs.

    Parameters
    ----------
    box_size
        ``D``: volumes are ``(D, D, D)`` ``[z, y, x]``, images ``(D, D)`` ``[y, x]``, centres at
        ``D // 2``.
    pixel_size_angstrom
        Pixel size in Å (for the CTF).
    projector
        ``"fourier"`` (Fourier-slice with trilinear interpolation and gridding correction) or
        ``"real"`` (voxel-driven bilinear splatting).
    pad
        Padding factor of the Fourier-slice projector's 3D transform.
    gridding
        Apply the gridding correction with the Fourier projector (default true).
    batch_size
        Particles per chunk (default: the projector's memory-based choice; larger on the Triton
        kernel path, which stores no per-sample geometry).

    Notes
    -----
    Both projectors give line integrals in voxel units. ``rotations`` are RELION ``A`` ``(B, 3,
    3)``, ``shifts_px`` RELION origins ``(B, 2)`` in pixels, ``ctf`` a :class:`CTFParams` of ``B``
    particles or precomputed half-grid CTFs ``(B, D, D // 2 + 1)``. Computation runs on the device
    and in the dtype (float32 or float64) of the volume (``project``, ``data_gradient``) or images
    (``backproject``).
    """

    def __init__(
        self,
        box_size: int,
        pixel_size_angstrom: float,
        projector: str = "fourier",
        pad: float = 2.0,
        *,
        gridding: bool = True,
        batch_size: int | None = None,
    ) -> None:
        if projector not in ("fourier", "real"):
            raise CryogradError(f"unknown projector {projector!r}: use 'fourier' or 'real'")
        if int(box_size) < 2:
            raise CryogradError(f"box size must be at least 2 pixels, got {box_size}")
        if not pixel_size_angstrom > 0:
            raise CryogradError(f"pixel size must be positive, got {pixel_size_angstrom}")
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.projector = projector
        self.pad = float(pad)
        self.padded_size = fs.padded_size(self.box_size, self.pad)
        self.gridding = bool(gridding)
        self._kernel_batch_size = (
            int(batch_size) if batch_size is not None else _kernel_batch_size(self.box_size)
        )
        if batch_size is None:
            batch_size = (
                fs.default_batch_size(self.box_size)
                if projector == "fourier"
                else rs.default_batch_size(self.box_size)
            )
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return (
            f"ForwardModel(box_size={self.box_size}, "
            f"pixel_size_angstrom={self.pixel_size_angstrom}, "
            f"projector={self.projector!r}, pad={self.pad})"
        )

    # ------------------------------------------------------------------ public API
    def project(
        self,
        volume: Any,
        rotations: Any,
        shifts_px: Any = None,
        ctf: CTFParams | Any = None,
    ) -> Any:
        """Images ``(B, D, D)`` of ``volume`` ``(D, D, D)``: ``T C P x``.

        Differentiable with respect to a tensor ``volume`` (backward = :meth:`backproject`).
        Returns the array kind of ``volume``.
        """
        kind = array_kind(volume)
        vol = self._as_volume(volume)
        rot, shifts, ctf = self._as_params(rotations, shifts_px, ctf, vol)
        if vol.requires_grad and torch.is_grad_enabled():
            out = _ProjectFunction.apply(vol, self, rot, shifts, ctf)
        else:
            out = self._project(vol, rot, shifts, ctf)
        return from_tensor(out, kind)

    def backproject(
        self,
        images: Any,
        rotations: Any,
        shifts_px: Any = None,
        ctf: CTFParams | Any = None,
    ) -> Any:
        """Exact adjoint ``Pᵀ Cᵀ Tᵀ`` of :meth:`project`: ``(B, D, D)`` images -> ``(D, D, D)``."""
        kind = array_kind(images)
        img = self._as_images(images)
        rot, shifts, ctf = self._as_params(rotations, shifts_px, ctf, img)
        with torch.no_grad():
            out = self._backproject(img, rot, shifts, ctf)
        return from_tensor(out, kind)

    def data_gradient(
        self,
        volume: Any,
        images: Any,
        rotations: Any,
        shifts_px: Any = None,
        ctf: CTFParams | Any = None,
        *,
        return_loss: bool = False,
    ) -> Any:
        """``Aᵀ (A x − b)``, the gradient of ``½ ||A x − b||²``, chunk by chunk.

        The projection geometry of each chunk is computed once and used by both directions (on
        the Triton path the kernels compute it on the fly instead).
        With ``return_loss=True`` returns ``(gradient, loss)`` with ``loss = ½ ||A x − b||²``
        (float).
        """
        kind = array_kind(volume)
        vol = self._as_volume(volume).detach()
        img = self._as_images(images).to(device=vol.device, dtype=vol.dtype)
        rot, shifts, ctf = self._as_params(rotations, shifts_px, ctf, vol)
        if img.shape[0] != rot.shape[0]:
            raise CryogradError(f"{img.shape[0]} images but {rot.shape[0]} rotations")
        loss = 0.0
        with torch.no_grad():
            if kernels.use_kernels(vol):
                grad, loss = self._data_gradient_kernels(vol, img, rot, shifts, ctf)
            elif self.projector == "fourier":
                ext = self._fourier_start(vol)
                acc = torch.zeros_like(ext)
                for sl, geom in self._fourier_chunks(rot):
                    filt = self._filter(sl, shifts, ctf, vol)
                    spectra = fs.extract_slices(ext, geom)
                    if filt is not None:
                        spectra = spectra * filt
                    resid = fs.spectra_to_images(spectra, self.box_size) - img[sl]
                    loss += 0.5 * float((resid * resid).sum())
                    back = fs.images_to_spectra_adjoint(resid)
                    if filt is not None:
                        back = back * torch.conj(filt)
                    fs.insert_slices(back, geom, accumulator=acc)
                grad = self._fourier_finish(acc)
            else:
                grad = torch.zeros_like(vol)
                for sl, geom in self._real_chunks(rot):
                    filt = self._filter(sl, shifts, ctf, vol)
                    proj = rs.project_geometry(vol, geom)
                    if filt is not None:
                        proj = fourier_filter(proj, filt)
                    resid = proj - img[sl]
                    loss += 0.5 * float((resid * resid).sum())
                    if filt is not None:
                        resid = fourier_filter(resid, torch.conj(filt))
                    grad += rs.backproject_geometry(resid, geom)
        grad = from_tensor(grad, kind)
        return (grad, loss) if return_loss else grad

    # ------------------------------------------------------------------ internals
    def _as_volume(self, volume: Any) -> torch.Tensor:
        vol = to_tensor(volume)
        if not vol.is_floating_point() or vol.dtype not in (torch.float32, torch.float64):
            vol = vol.to(torch.float32)
        d = self.box_size
        if tuple(vol.shape) != (d, d, d):
            raise CryogradError(f"volume has shape {tuple(vol.shape)}, expected {(d, d, d)}")
        return vol

    def _as_images(self, images: Any) -> torch.Tensor:
        img = to_tensor(images)
        if not img.is_floating_point() or img.dtype not in (torch.float32, torch.float64):
            img = img.to(torch.float32)
        d = self.box_size
        if img.dim() != 3 or tuple(img.shape[1:]) != (d, d):
            raise CryogradError(f"images have shape {tuple(img.shape)}, expected (B, {d}, {d})")
        return img

    def _as_params(self, rotations, shifts_px, ctf, ref: torch.Tensor):
        rot = to_tensor(rotations).to(device=ref.device, dtype=ref.dtype)
        if rot.dim() == 2:
            rot = rot.unsqueeze(0)
        if rot.dim() != 3 or tuple(rot.shape[1:]) != (3, 3):
            raise CryogradError(f"rotations have shape {tuple(rot.shape)}, expected (B, 3, 3)")
        b = rot.shape[0]
        if b and not _are_rotations(rot):
            raise CryogradError(
                "rotations must be finite orthonormal 3×3 matrices (|A Aᵀ − I| <= 1e-3)"
            )
        shifts = None
        if shifts_px is not None:
            shifts = to_tensor(shifts_px).to(device=ref.device, dtype=ref.dtype).reshape(-1, 2)
            if shifts.shape[0] != b:
                raise CryogradError(f"{shifts.shape[0]} shifts but {b} rotations")
        if ctf is not None:
            if isinstance(ctf, CTFParams):
                if len(ctf) != b:
                    raise CryogradError(f"{len(ctf)} CTFs but {b} rotations")
            else:
                ctf = to_tensor(ctf).to(device=ref.device, dtype=ref.dtype)
                shape = (b, self.box_size, self.box_size // 2 + 1)
                if tuple(ctf.shape) != shape:
                    raise CryogradError(f"CTF array has shape {tuple(ctf.shape)}, expected {shape}")
        return rot, shifts, ctf

    def _filter(self, sl: slice, shifts, ctf, ref: torch.Tensor) -> torch.Tensor | None:
        """Half-grid product ``ramp(-origin) · CTF`` of a chunk, or None."""
        filt = None
        if ctf is not None:
            if isinstance(ctf, CTFParams):
                filt = ctf_2d(
                    ctf[sl],
                    self.box_size,
                    self.pixel_size_angstrom,
                    device=ref.device,
                    dtype=ref.dtype,
                )
            else:
                filt = ctf[sl]
        if shifts is not None:
            ramp = phase_ramp(-shifts[sl], self.box_size, dtype=ref.dtype)
            filt = ramp if filt is None else ramp * filt
        return filt

    def _fourier_chunks(self, rot: torch.Tensor):
        for start in range(0, rot.shape[0], self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield sl, fs.slice_geometry(rot[sl], self.box_size, self.padded_size)

    def _real_chunks(self, rot: torch.Tensor):
        for start in range(0, rot.shape[0], self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield sl, rs.real_space_geometry(rot[sl], self.box_size)

    def _kernel_chunks(self, n: int):
        for start in range(0, n, self._kernel_batch_size):
            yield slice(start, start + self._kernel_batch_size)

    def _kernel_filter(self, sl: slice, shifts, ctf) -> dict[str, Any]:
        """Keyword arguments of the fused Triton slice kernels for a chunk (CTF and shifts)."""
        return {
            "ctf": None if ctf is None else ctf[sl],
            "shifts_px": None if shifts is None else shifts[sl],
            "pixel_size_angstrom": self.pixel_size_angstrom,
        }

    def _fourier_start(self, vol: torch.Tensor) -> torch.Tensor:
        """Flat extended spectrum of the (gridding-corrected) volume."""
        vin = fs.gridding_correction(vol, self.padded_size) if self.gridding else vol
        return fs.ExtendedSpectrum.from_spectrum(fs.volume_spectrum(vin, self.padded_size))

    def _fourier_finish(self, acc: torch.Tensor) -> torch.Tensor:
        vol = fs.volume_spectrum_adjoint(
            fs.ExtendedSpectrum.fold(acc, self.padded_size), self.box_size
        )
        return fs.gridding_correction(vol, self.padded_size) if self.gridding else vol

    def _project(self, vol, rot, shifts, ctf) -> torch.Tensor:
        d = self.box_size
        out = [vol.new_zeros((0, d, d))]
        with torch.no_grad():
            if kernels.use_kernels(vol):
                out.extend(self._project_kernels(vol, rot, shifts, ctf))
            elif self.projector == "fourier":
                ext = self._fourier_start(vol)
                for sl, geom in self._fourier_chunks(rot):
                    spectra = fs.extract_slices(ext, geom)
                    filt = self._filter(sl, shifts, ctf, vol)
                    if filt is not None:
                        spectra = spectra * filt
                    out.append(fs.spectra_to_images(spectra, d))
            else:
                for sl, geom in self._real_chunks(rot):
                    proj = rs.project_geometry(vol, geom)
                    filt = self._filter(sl, shifts, ctf, vol)
                    if filt is not None:
                        proj = fourier_filter(proj, filt)
                    out.append(proj)
        return torch.cat(out)

    def _backproject(self, img, rot, shifts, ctf) -> torch.Tensor:
        if img.shape[0] != rot.shape[0]:
            raise CryogradError(f"{img.shape[0]} images but {rot.shape[0]} rotations")
        with torch.no_grad():
            if kernels.use_kernels(img):
                return self._backproject_kernels(img, rot, shifts, ctf)
            if self.projector == "fourier":
                cdtype = torch.complex128 if img.dtype == torch.float64 else torch.complex64
                acc = fs.ExtendedSpectrum.zeros(self.padded_size, device=img.device, dtype=cdtype)
                for sl, geom in self._fourier_chunks(rot):
                    back = fs.images_to_spectra_adjoint(img[sl])
                    filt = self._filter(sl, shifts, ctf, img)
                    if filt is not None:
                        back = back * torch.conj(filt)
                    fs.insert_slices(back, geom, accumulator=acc)
                return self._fourier_finish(acc)
            vol = img.new_zeros((self.box_size,) * 3)
            for sl, geom in self._real_chunks(rot):
                part = img[sl]
                filt = self._filter(sl, shifts, ctf, img)
                if filt is not None:
                    part = fourier_filter(part, torch.conj(filt))
                vol += rs.backproject_geometry(part, geom)
            return vol

    # ------------------------------------------------------------------ Triton kernel path
    # Same operator as the torch path above (the kernels are tested against it). The Fourier
    # kernels fuse slice geometry, CTF (computed from the parameters) and shift ramp, so neither
    # slice_geometry nor a (b, D, D // 2 + 1) filter is built here; the real-space kernels replace
    # real_space_geometry + project/backproject_geometry and keep the 2D filter of the torch path.
    def _project_chunk_kernels(self, vol, rot, shifts, ctf, sl, ext, filt=None) -> torch.Tensor:
        """Images ``(b, D, D)`` of chunk ``sl``.

        ``ext`` is the volume's flat extended spectrum (Fourier projector); ``filt`` the chunk's
        :meth:`_filter` (real-space projector; None: no CTF and no shift).
        """
        d = self.box_size
        if self.projector == "fourier":
            kw = self._kernel_filter(sl, shifts, ctf)
            spectra = kernels.fourier_slice.extract_slices(ext, rot[sl], d, **kw)
            return fs.spectra_to_images(spectra, d)
        proj = kernels.real_space.project(vol, rot[sl])
        return proj if filt is None else fourier_filter(proj, filt)

    def _backproject_chunk_kernels(self, img_chunk, rot, shifts, ctf, sl, acc, filt=None) -> None:
        """Add the transpose of :meth:`_project_chunk_kernels` of ``(b, D, D)`` images into
        ``acc`` (flat extended spectrum, or the ``(D, D, D)`` volume of the real projector)."""
        if self.projector == "fourier":
            kw = self._kernel_filter(sl, shifts, ctf)
            back = fs.images_to_spectra_adjoint(img_chunk)
            kernels.fourier_slice.insert_slices(back, rot[sl], acc, **kw)
            return
        if filt is not None:
            img_chunk = fourier_filter(img_chunk, torch.conj(filt))
        acc += kernels.real_space.backproject(img_chunk, rot[sl])

    def _chunk_filter(self, sl, shifts, ctf, ref) -> torch.Tensor | None:
        """The 2D filter the real-space kernel path applies (the Fourier kernels fuse theirs)."""
        return None if self.projector == "fourier" else self._filter(sl, shifts, ctf, ref)

    def _new_accumulator(self, ref: torch.Tensor) -> torch.Tensor:
        if self.projector == "fourier":
            cdtype = torch.complex128 if ref.dtype == torch.float64 else torch.complex64
            return fs.ExtendedSpectrum.zeros(self.padded_size, device=ref.device, dtype=cdtype)
        return ref.new_zeros((self.box_size,) * 3)

    def _finish(self, acc: torch.Tensor) -> torch.Tensor:
        return self._fourier_finish(acc) if self.projector == "fourier" else acc

    def _project_kernels(self, vol, rot, shifts, ctf) -> list[torch.Tensor]:
        ext = self._fourier_start(vol) if self.projector == "fourier" else None
        return [
            self._project_chunk_kernels(
                vol, rot, shifts, ctf, sl, ext, self._chunk_filter(sl, shifts, ctf, vol)
            )
            for sl in self._kernel_chunks(rot.shape[0])
        ]

    def _backproject_kernels(self, img, rot, shifts, ctf) -> torch.Tensor:
        acc = self._new_accumulator(img)
        for sl in self._kernel_chunks(rot.shape[0]):
            filt = self._chunk_filter(sl, shifts, ctf, img)
            self._backproject_chunk_kernels(img[sl], rot, shifts, ctf, sl, acc, filt)
        return self._finish(acc)

    def _data_gradient_kernels(self, vol, img, rot, shifts, ctf) -> tuple[torch.Tensor, float]:
        ext = self._fourier_start(vol) if self.projector == "fourier" else None
        acc = self._new_accumulator(vol)
        # summed on the device (no host sync per chunk), in float64 like the torch path's floats
        loss = torch.zeros((), device=vol.device, dtype=torch.float64)
        for sl in self._kernel_chunks(rot.shape[0]):
            filt = self._chunk_filter(sl, shifts, ctf, vol)
            resid = self._project_chunk_kernels(vol, rot, shifts, ctf, sl, ext, filt) - img[sl]
            loss += 0.5 * (resid * resid).sum().double()
            self._backproject_chunk_kernels(resid, rot, shifts, ctf, sl, acc, filt)
        return self._finish(acc), float(loss)
