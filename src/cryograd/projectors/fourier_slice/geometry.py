"""Geometry of the Fourier-slice projector (trilinear, half grid, Friedel symmetry).

This module holds the maths shared by every backend (``_torch.py``, ``_cpu.py``, ``_triton.py``)
and imports nothing else from cryograd but :mod:`cryograd.fourier`.

Sampling and normalisation (the contract other modules rely on)
----------------------------------------------------------------
* The ``(D, D, D)`` volume is zero-padded to ``P ≈ pad · D`` (even, :func:`padded_size`) with its
  centre voxel ``D // 2`` at ``P // 2``, and transformed once: ``F = rfftn_centered(padded)``, shape
  ``(P, P, P // 2 + 1)`` in torch's unshifted layout ``[kz, ky, kx]``, unnormalised
  (``F(q) = Σ_r x(r) e^{-2πi q·r / P}``). This is :func:`volume_spectrum`.
* Images are made on the ``D`` grid (RELION's choice): the half-grid sample ``(kx, ky)`` (integers,
  ``D × (D // 2 + 1)``, :func:`cryograd.fourier.frequency_grid_2d`) takes the value of ``F`` at
  ``q = (P / D) · Aᵀ (kx, ky, 0)`` by trilinear interpolation. Samples with ``|k| > D // 2``
  (beyond the Nyquist circle) are zero. A sample with ``q_x < 0`` takes ``conj F(-q)`` (Friedel
  symmetry); the ``ky``/``kz`` axes wrap periodically. This is ``extract_slices``.
* The image is ``irfft2_centered`` of the slice on the ``D`` grid (after the ``kx = 0`` and Nyquist
  columns are made Hermitian, so that every FFT backend gives the same real-linear map). With these
  scalings the image is the line integral ``∫ V(Aᵀ (x, y, z)) dz`` in voxel units, exactly as the
  real-space projector makes it (no extra factor). Content outside the inscribed sphere of the
  box wraps around in the ``D × D`` image (as in RELION); keep the particle inside the sphere.
* Trilinear interpolation multiplies the volume by ``sinc²(x/P) sinc²(y/P) sinc²(z/P)`` (torch's
  normalised sinc, coordinates ``x = k - D // 2`` in voxels); :func:`gridding_correction` divides by
  it. It is a separate, diagonal, self-adjoint real-space operator.

Transposes (exact, in the real inner product ``<a, b> = Re Σ conj(a) b``)
------------------------------------------------------------------------
* ``insert_slices`` scatters with the same 8 weights (conjugated values for mirrored samples).
* :func:`images_to_spectra_adjoint` is ``(c / D²) · rfft2_centered`` with ``c = 1`` on the ``kx =
  0`` (and Nyquist) column and ``2`` elsewhere: the transpose of :func:`spectra_to_images`.
* :func:`volume_spectrum_adjoint` is ``crop(P³ · irfftn_centered(herm(G / c)))``: the transpose of
  :func:`volume_spectrum`.

So ``project = spectra_to_images ∘ extract ∘ volume_spectrum (∘ gridding)`` and ``backproject`` is
its transpose; the dot-product test holds to rounding in float64.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from cryograd.fourier import irfft2_centered, irfftn_centered, rfft2_centered, rfftn_centered

__all__ = [
    "padded_size",
    "pad_volume",
    "crop_volume",
    "volume_spectrum",
    "volume_spectrum_adjoint",
    "gridding_weights",
    "gridding_correction",
    "SliceGeometry",
    "slice_geometry",
    "slice_sample_positions",
    "extended_strides",
    "ExtendedSpectrum",
    "hermitian_part_rfft",
    "spectra_to_images",
    "images_to_spectra_adjoint",
    "default_batch_size",
]

#: Slice samples (times 8 corners) per chunk.
_SAMPLE_BUDGET = 1 << 21


def default_batch_size(box_size: int) -> int:
    """Particles per chunk for the Fourier-slice pair (about 2 M slice samples per chunk)."""
    return max(1, _SAMPLE_BUDGET // (box_size * (box_size // 2 + 1)))


def padded_size(box_size: int, pad: float = 2.0) -> int:
    """Side ``P`` of the zero-padded volume: ``pad · D`` rounded to an even integer, at least
    ``D``."""
    p = 2 * int(round(pad * box_size / 2.0))
    return p if p >= box_size else box_size + box_size % 2


def _pad_offset(box_size: int, padded: int) -> int:
    return padded // 2 - box_size // 2


def pad_volume(volume: torch.Tensor, padded: int) -> torch.Tensor:
    """Zero-pad ``(D, D, D)`` to ``(P, P, P)`` keeping the centre voxel ``D // 2`` at ``P // 2``."""
    n = volume.shape[-1]
    o = _pad_offset(n, padded)
    out = volume.new_zeros((padded,) * 3)
    out[o : o + n, o : o + n, o : o + n] = volume
    return out


def crop_volume(volume: torch.Tensor, box_size: int) -> torch.Tensor:
    """Central ``(D, D, D)`` of a ``(P, P, P)`` volume (the transpose of :func:`pad_volume`)."""
    p = volume.shape[-1]
    o = _pad_offset(box_size, p)
    return volume[o : o + box_size, o : o + box_size, o : o + box_size]


def _flip_mod(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``y[i] = x[(-i) mod n]`` along ``dims``."""
    return torch.roll(torch.flip(x, dims), shifts=(1,) * len(dims), dims=dims)


def hermitian_part_rfft(spectra: torch.Tensor, last_size: int, ndim: int) -> torch.Tensor:
    """Make the ``kx = 0`` (and, for even sizes, Nyquist) planes of half spectra Hermitian.

    ``(Y(k) + conj Y(-k)) / 2`` on those planes. The real part of the inverse transform is
    unchanged, and every FFT backend then computes the same ``irfft``.

    Parameters
    ----------
    spectra
        ``(..., N, ..., N // 2 + 1)`` half spectra with ``ndim`` transformed dimensions.
    last_size
        ``N`` of the last (halved) dimension.
    ndim
        2 or 3.
    """
    out = spectra.clone()
    dims = tuple(range(-ndim, -1))
    cols = [0] + ([last_size // 2] if last_size % 2 == 0 else [])
    for col in cols:
        plane = spectra[..., col]
        pdims = tuple(d + 1 for d in dims)  # dims of the plane (last dim removed)
        out[..., col] = 0.5 * (plane + torch.conj(_flip_mod(plane, pdims)))
    return out


def _column_weights(size: int, device, dtype) -> torch.Tensor:
    """``c``: 1 on the ``kx = 0`` (and Nyquist) column of a half grid, 2 elsewhere."""
    c = torch.full((size // 2 + 1,), 2.0, device=device, dtype=dtype)
    c[0] = 1.0
    if size % 2 == 0:
        c[-1] = 1.0
    return c


def volume_spectrum(volume: torch.Tensor, padded: int) -> torch.Tensor:
    """``rfftn_centered`` of the zero-padded volume: ``(D, D, D)`` -> ``(P, P, P // 2 + 1)``
    complex."""
    return rfftn_centered(pad_volume(volume, padded))


def volume_spectrum_adjoint(spectrum: torch.Tensor, box_size: int) -> torch.Tensor:
    """Exact transpose of :func:`volume_spectrum`: ``(P, P, P // 2 + 1)`` -> ``(D, D, D)`` real."""
    p = spectrum.shape[-2]
    c = _column_weights(p, spectrum.device, spectrum.real.dtype)
    herm = hermitian_part_rfft(spectrum / c, p, 3)
    return crop_volume(irfftn_centered(herm, p), box_size) * float(p**3)


def gridding_weights(
    box_size: int, padded: int, *, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``1 / (sinc²(x/P) sinc²(y/P) sinc²(z/P))`` on the ``(D, D, D)`` grid (trilinear
    correction)."""
    c = torch.arange(box_size, device=device, dtype=torch.float64) - box_size // 2
    w = 1.0 / torch.sinc(c / padded) ** 2
    return (w[:, None, None] * w[None, :, None] * w[None, None, :]).to(dtype)


def gridding_correction(volume: torch.Tensor, padded: int) -> torch.Tensor:
    """Divide a ``(D, D, D)`` volume by the trilinear kernel's real-space window (self-adjoint)."""
    n = volume.shape[-1]
    return volume * gridding_weights(n, padded, device=volume.device, dtype=volume.dtype)


def slice_sample_positions(box_size: int, *, device=None, dtype=torch.float32):
    """The half-grid samples inside the Nyquist circle ``|k| <= D // 2``.

    Returns
    -------
    kx, ky
        ``(n_s,)`` integer frequencies (as ``dtype``).
    flat
        ``(n_s,)`` int64 positions in the flattened ``(D, D // 2 + 1)`` half grid.
    """
    n = box_size
    w = n // 2 + 1
    ky = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=torch.float64)
    kx = torch.arange(w, device=device, dtype=torch.float64)
    gy, gx = torch.meshgrid(ky, kx, indexing="ij")
    inside = (gx**2 + gy**2 <= (n // 2) ** 2).reshape(-1)
    flat = torch.nonzero(inside).squeeze(1)
    return gx.reshape(-1)[flat].to(dtype), gy.reshape(-1)[flat].to(dtype), flat


class SliceGeometry:
    """Trilinear interpolation geometry of a chunk of central slices.

    The per-sample arrays are computed on first use: the compiled CPU loops
    (``_cpu.py``) and the Triton kernels compute the same geometry on the fly from
    ``rotations`` and never need them.

    Attributes
    ----------
    rotations
        ``(b, 3, 3)`` RELION ``A`` in the geometry's dtype.
    base
        ``(b * n_s,)`` int64 flat index of the lower corner in the extended spectrum
        (:class:`ExtendedSpectrum`).
    fx, fy, fz
        ``(b * n_s,)`` trilinear fractions.
    sign
        ``(b * n_s,)`` +1, or -1 where the sample was mirrored (value conjugated).
    flat
        ``(n_s,)`` positions of the samples in the flattened ``(D, D // 2 + 1)`` half grid.
    batch, box_size, padded
        ``b``, ``D``, ``P``.
    offsets
        None (central sections), or ``(b, n_s)`` out-of-plane coordinates ``z`` (``D``-grid
        pixels) of the samples: sample ``k`` then maps to ``(P / D) Aᵀ (kx, ky, z)`` (the curved
        surfaces of the Ewald-sphere insertion, :mod:`cryograd.solvers.ewald`; torch path only).
    """

    def __init__(
        self,
        rotations: torch.Tensor,
        box_size: int,
        padded: int,
        offsets: torch.Tensor | None = None,
    ) -> None:
        self.rotations = rotations
        self.batch = int(rotations.shape[0])
        self.box_size = box_size
        self.padded = padded
        self.offsets = offsets

    @cached_property
    def _arrays(self) -> tuple[torch.Tensor, ...]:
        rot = self.rotations
        dtype = rot.dtype
        kx, ky, flat = slice_sample_positions(self.box_size, device=rot.device, dtype=dtype)
        scale = self.padded / self.box_size
        # q[b, s, :] = scale * (kx[s] * A[b, 0, :] + ky[s] * A[b, 1, :])
        q = scale * (
            kx[None, :, None] * rot[:, None, 0, :] + ky[None, :, None] * rot[:, None, 1, :]
        )
        if self.offsets is not None:
            q = q + scale * self.offsets.to(dtype)[..., None] * rot[:, None, 2, :]
        mirror = q[..., 0] < 0
        q = torch.where(mirror[..., None], -q, q)
        # |q| <= P / 2 for an orthonormal A; clamping keeps the 8 corners inside the extended
        # layout when rounding (a row of A of norm 1 + 1 ulp, an axis-aligned view) puts a
        # sample on the Nyquist sphere a hair outside it. The compiled loops clamp the same way.
        half = float(self.padded // 2)
        q = q.clamp(-half, half)
        sign = 1.0 - 2.0 * mirror.to(dtype)
        q0 = torch.floor(q)
        frac = q - q0
        i0 = q0.long()
        sz, sy = extended_strides(self.padded)
        h = self.padded // 2
        base = (i0[..., 2] + h) * sz + (i0[..., 1] + h) * sy + i0[..., 0]
        return (
            base.reshape(-1),
            frac[..., 0].reshape(-1),
            frac[..., 1].reshape(-1),
            frac[..., 2].reshape(-1),
            sign.reshape(-1),
            flat,
        )

    base = property(lambda self: self._arrays[0])
    fx = property(lambda self: self._arrays[1])
    fy = property(lambda self: self._arrays[2])
    fz = property(lambda self: self._arrays[3])
    sign = property(lambda self: self._arrays[4])
    flat = property(lambda self: self._arrays[5])

    @property
    def strides(self) -> tuple[int, int]:
        """Flat strides ``(sz, sy)`` of the extended spectrum."""
        return extended_strides(self.padded)

    def corner_offsets(self) -> list[int]:
        sz, sy = self.strides
        return [dz + dy + dx for dz in (0, sz) for dy in (0, sy) for dx in (0, 1)]

    def corner_weights(self) -> list[torch.Tensor]:
        """The 8 trilinear weights in the order of :meth:`corner_offsets`."""
        wx = (1 - self.fx, self.fx)
        wy = (1 - self.fy, self.fy)
        wz = (1 - self.fz, self.fz)
        out = []
        for iz in range(2):
            for iy in range(2):
                wzy = wz[iz] * wy[iy]
                out.extend([wzy * wx[0], wzy * wx[1]])
        return out


def extended_strides(padded: int) -> tuple[int, int]:
    """Flat strides ``(sz, sy)`` of the extended spectrum of side ``P`` (ExtendedSpectrum)."""
    half = padded // 2 + 1
    return (padded + 2) * (half + 1), half + 1


def slice_geometry(
    rotations: torch.Tensor, box_size: int, padded: int, *, dtype: torch.dtype | None = None
) -> SliceGeometry:
    """Where the central slices of ``b`` particles sample the padded 3D spectrum.

    Parameters
    ----------
    rotations
        ``(b, 3, 3)`` RELION ``A``; sample ``(kx, ky)`` maps to ``q = (P / D) Aᵀ (kx, ky, 0)``.
    box_size, padded
        ``D`` and ``P``.
    """
    dtype = dtype or rotations.dtype
    return SliceGeometry(rotations.to(dtype), box_size, padded)


class ExtendedSpectrum:
    """The half spectrum laid out so that the 8 corners of any sample are plain flat offsets.

    ``ext[z, y, x]`` (shape ``(P + 2, P + 2, P // 2 + 2)``) holds ``F[(z - P//2) mod P, (y - P//2)
    mod P, x]`` for ``x <= P // 2`` and 0 in the extra ``x`` column. :meth:`fold` is the exact
    transpose of :meth:`from_spectrum` (wrapped entries are summed back).
    """

    @staticmethod
    def _wrap_index(padded: int, device) -> torch.Tensor:
        return (torch.arange(padded + 2, device=device) - padded // 2) % padded

    @staticmethod
    def from_spectrum(spectrum: torch.Tensor) -> torch.Tensor:
        """``(P, P, P // 2 + 1)`` -> flat extended ``((P + 2)² (P // 2 + 2),)`` complex."""
        p = spectrum.shape[0]
        w = ExtendedSpectrum._wrap_index(p, spectrum.device)
        ext = spectrum.index_select(0, w).index_select(1, w)
        zero = ext.new_zeros((p + 2, p + 2, 1))
        return torch.cat([ext, zero], dim=2).reshape(-1)

    @staticmethod
    def zeros(padded: int, *, device=None, dtype=torch.complex64) -> torch.Tensor:
        """A flat extended accumulator of zeros."""
        half = padded // 2 + 1
        return torch.zeros((padded + 2) ** 2 * (half + 1), device=device, dtype=dtype)

    @staticmethod
    def zeros_packed(padded: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
        """A flat packed accumulator of zeros: ``(re, im, weight)`` real triples per extended
        cell (the compiled insertion adds a sample's values and weights in the same cache
        lines); :meth:`fold_packed` splits it.

        On the CPU the zeros come from ``calloc`` (NumPy): the pages are zeroed when the
        threaded insertion first writes them, instead of by one thread up front (about 0.1 s
        for the 104 MB grid of box 128, pad 2).
        """
        half = padded // 2 + 1
        size = (padded + 2) ** 2 * (half + 1) * 3
        on_cpu = device is None or torch.device(device).type == "cpu"
        if on_cpu and dtype in (torch.float32, torch.float64):
            return torch.from_numpy(np.zeros(size, dtype=str(dtype).removeprefix("torch.")))
        return torch.zeros(size, device=device, dtype=dtype)

    @staticmethod
    def fold_packed(packed: torch.Tensor, padded: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`fold` of a packed accumulator: the complex numerator and the real weights,
        each ``(P, P, P // 2 + 1)``, with no temporary larger than one plane."""
        half = padded // 2 + 1
        ext = packed.view(padded + 2, padded + 2, half + 1, 3)
        cdtype = torch.complex128 if packed.dtype == torch.float64 else torch.complex64
        num = torch.empty((padded, padded, half), device=packed.device, dtype=cdtype)
        _fold_into(torch.view_as_real(num), ext[..., :2], padded)
        wts = torch.empty((padded, padded, half), device=packed.device, dtype=packed.dtype)
        _fold_into(wts, ext[..., 2], padded)
        return num, wts

    @staticmethod
    def fold(ext_flat: torch.Tensor, padded: int) -> torch.Tensor:
        """Transpose of :meth:`from_spectrum`: flat extended -> ``(P, P, P // 2 + 1)``."""
        half = padded // 2 + 1
        ext = ext_flat.view(padded + 2, padded + 2, half + 1)[..., :half]
        w = ExtendedSpectrum._wrap_index(padded, ext.device)
        tmp = ext.new_zeros((padded, padded + 2, half)).index_add_(0, w, ext)
        return ext.new_zeros((padded, padded, half)).index_add_(1, w, tmp)


def _fold_into(out: torch.Tensor, ext: torch.Tensor, padded: int) -> None:
    """``out[j] = Σ ext[z]`` over the extended rows ``z`` with ``(z - P // 2) mod P = j``, in
    ``z`` and ``y`` (``out``: ``(P, P, H, ...)``, ``ext``: ``(P + 2, P + 2, H + 1, ...)``): block
    copies of the two wrapped halves, then the two extra planes and rows added."""
    p, h = padded, padded // 2
    half = out.shape[2]
    blocks = [(slice(0, p - h), slice(h, p)), (slice(p - h, p), slice(0, h))]
    extra = [((z - h) % p, z) for z in (p, p + 1)]
    for dz, sz in blocks:
        for dy, sy in blocks:
            out[dz, dy] = ext[sz, sy, :half]
    for jz, z in extra:
        for dy, sy in blocks:
            out[jz, dy] += ext[z, sy, :half]
        for jy, y in extra:
            out[jz, jy] += ext[z, y, :half]
    for jy, y in extra:
        for dz, sz in blocks:
            out[dz, jy] += ext[sz, y, :half]


def spectra_to_images(spectra: torch.Tensor, box_size: int) -> torch.Tensor:
    """``(b, D, D // 2 + 1)`` half spectra -> ``(b, D, D)`` real images (``irfft2_centered``)."""
    return irfft2_centered(hermitian_part_rfft(spectra, box_size, 2), box_size)


def images_to_spectra_adjoint(images: torch.Tensor) -> torch.Tensor:
    """Exact transpose of :func:`spectra_to_images`: ``(c / D²) · rfft2_centered(images)``."""
    n = images.shape[-1]
    c = _column_weights(n, images.device, images.dtype)
    return rfft2_centered(images) * (c / float(n * n))
