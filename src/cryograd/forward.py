"""The image formation model ``b_i = T_i C_i P_i x`` and its exact adjoint.

``P_i`` is a projector (:data:`cryograd.projectors.PROJECTORS`: ``"fourier"`` with its gridding
correction, or ``"real"``), ``C_i`` the particle's CTF (RELION sign, :func:`cryograd.ctf.ctf_2d`)
and ``T_i`` the shift by ``-origin`` (RELION's ``rlnOriginX/Y`` in pixels,
:attr:`ParticleSet.shifts_px`): the forward model moves the centred projection by ``-origin``;
back-projection moves the image by ``+origin``.

``C`` and ``T`` are diagonal on the 2D half spectrum. As real-linear maps on images,
``image -> irfft2(herm(d · rfft2(image)))``, their transposes multiply by ``conj(d)`` (the CTF is
real, so ``C`` is self-adjoint). With the Fourier-slice projector they are applied to the slice
directly, before its single inverse FFT.

:class:`ForwardModel` composes ``T C P`` over any :class:`cryograd.projectors.Projector`: it
validates and converts the inputs and hands them, with the CTF and shifts as
:class:`cryograd.projectors.ImageFilters`, to the projector object, which runs the backend that
:func:`cryograd.projectors.select_backend` chooses (torch, compiled CPU loops, or Triton kernels
with geometry, CTF and shift fused in). All backends compute the same operator.

:meth:`ForwardModel.project` is a :class:`torch.autograd.Function` when the volume requires a
gradient: its backward is one call of :meth:`ForwardModel.backproject`, not autograd through the
scatter.
All public methods accept torch tensors, NumPy arrays and CuPy arrays and return the kind they were
given (:mod:`cryograd.arrays`).
"""

from __future__ import annotations

from typing import Any

import torch

from cryograd.arrays import array_kind, from_tensor, to_tensor
from cryograd.ctf import CTFParams, ctf_2d
from cryograd.errors import CryogradError
from cryograd.optics.particles import ParticleOptics
from cryograd.projectors import ImageFilters, make_projector
from cryograd.projectors.backend import kernel_batch_size
from cryograd.projectors.real_space._torch import fourier_filter
from cryograd.shift import phase_ramp

__all__ = ["ForwardModel", "fourier_filter", "apply_ctf", "apply_shift"]

#: Former name of :func:`cryograd.projectors.backend.kernel_batch_size` (kept for old imports).
_kernel_batch_size = kernel_batch_size


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
    def forward(ctx, volume, model, rotations, shifts_px, ctf, optics):  # noqa: D401
        ctx.model = model
        ctx.args = (rotations, shifts_px, ctf, optics)
        return model._project(volume, rotations, shifts_px, ctf, optics)

    @staticmethod
    def backward(ctx, grad_images):
        rotations, shifts_px, ctf, optics = ctx.args
        grad = ctx.model._backproject(grad_images.contiguous(), rotations, shifts_px, ctf, optics)
        return grad, None, None, None, None, None


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
        if int(box_size) < 2:
            raise CryogradError(f"box size must be at least 2 pixels, got {box_size}")
        if not pixel_size_angstrom > 0:
            raise CryogradError(f"pixel size must be positive, got {pixel_size_angstrom}")
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.projector = projector
        self.pad = float(pad)
        self.gridding = bool(gridding)
        #: The projector object (:data:`cryograd.projectors.PROJECTORS`).
        self.operator = make_projector(
            projector, self.box_size, pad=self.pad, gridding=self.gridding, batch_size=batch_size
        )
        self.padded_size = getattr(self.operator, "padded_size", self.box_size)
        #: Particles per chunk of the reference backends (the one given, or the projector's
        #: memory-based default; the Triton path defaults to larger chunks).
        self.batch_size = int(batch_size or self.operator.default_batch_size("torch"))

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
        *,
        optics: ParticleOptics | None = None,
    ) -> Any:
        """Images ``(B, D, D)`` of ``volume`` ``(D, D, D)``: ``T C P x``.

        Differentiable with respect to a tensor ``volume`` (backward = :meth:`backproject`).
        Returns the array kind of ``volume``. ``optics`` (RELION's observation model of the
        ``B`` particles, :meth:`cryograd.particle_set.ParticleSet.particle_optics`) adds beam
        tilt and odd Zernike (``exp(+iφ)`` on the prediction), even Zernike and magnification
        in the CTF, and takes the slices at the magnified, rescaled positions; CTF *values*
        given with it must already include it (:func:`cryograd.solvers.batches.load_batch`).
        """
        kind = array_kind(volume)
        vol = self._as_volume(volume)
        rot, shifts, ctf = self._as_params(rotations, shifts_px, ctf, vol)
        _check_optics(optics, rot.shape[0])
        if vol.requires_grad and torch.is_grad_enabled():
            out = _ProjectFunction.apply(vol, self, rot, shifts, ctf, optics)
        else:
            out = self._project(vol, rot, shifts, ctf, optics)
        return from_tensor(out, kind)

    def backproject(
        self,
        images: Any,
        rotations: Any,
        shifts_px: Any = None,
        ctf: CTFParams | Any = None,
        *,
        optics: ParticleOptics | None = None,
    ) -> Any:
        """Exact adjoint ``Pᵀ Cᵀ Tᵀ`` of :meth:`project`: ``(B, D, D)`` images -> ``(D, D, D)``
        (with ``optics``, the adjoint of :meth:`project` with the same optics)."""
        kind = array_kind(images)
        img = self._as_images(images)
        rot, shifts, ctf = self._as_params(rotations, shifts_px, ctf, img)
        _check_optics(optics, rot.shape[0])
        with torch.no_grad():
            out = self._backproject(img, rot, shifts, ctf, optics)
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
        optics: ParticleOptics | None = None,
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
        _check_optics(optics, rot.shape[0])
        with torch.no_grad():
            grad, loss = self.operator.data_gradient(
                vol, img, rot, self._filters(shifts, ctf, optics)
            )
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

    def _filters(self, shifts, ctf, optics=None) -> ImageFilters:
        return ImageFilters(ctf, shifts, self.pixel_size_angstrom, optics)

    def _project(self, vol, rot, shifts, ctf, optics=None) -> torch.Tensor:
        with torch.no_grad():
            return self.operator.project(vol, rot, self._filters(shifts, ctf, optics))

    def _backproject(self, img, rot, shifts, ctf, optics=None) -> torch.Tensor:
        if img.shape[0] != rot.shape[0]:
            raise CryogradError(f"{img.shape[0]} images but {rot.shape[0]} rotations")
        with torch.no_grad():
            return self.operator.backproject(img, rot, self._filters(shifts, ctf, optics))


def _check_optics(optics: ParticleOptics | None, n: int) -> None:
    if optics is not None and len(optics) != n:
        raise CryogradError(f"optics of {len(optics)} particles but {n} rotations")
