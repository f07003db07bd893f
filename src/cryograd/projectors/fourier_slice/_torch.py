"""Torch reference of Fourier-slice extraction and insertion (gathers and ``index_add_``).

The geometry (:class:`~cryograd.projectors.fourier_slice.geometry.SliceGeometry`) is computed as
``(batch × samples)`` tensors; each sample reads or scatters its 8 trilinear corners of the flat
extended spectrum (:class:`~cryograd.projectors.fourier_slice.geometry.ExtendedSpectrum`).
"""

from __future__ import annotations

import torch

from cryograd.projectors.base import ImageFilters
from cryograd.projectors.fourier_slice.geometry import (
    ExtendedSpectrum,
    SliceGeometry,
    gridding_correction,
    images_to_spectra_adjoint,
    slice_geometry,
    spectra_to_images,
    volume_spectrum,
    volume_spectrum_adjoint,
)

__all__ = ["extract_slices", "insert_slices", "TorchSteps"]


def extract_slices(ext_flat: torch.Tensor, geom: SliceGeometry) -> torch.Tensor:
    """Central slices ``(b, D, D // 2 + 1)`` (complex) of a flat extended spectrum."""
    n = geom.box_size
    acc: torch.Tensor | None = None
    for off, wgt in zip(geom.corner_offsets(), geom.corner_weights()):
        vals = ext_flat[off:].index_select(0, geom.base) * wgt
        acc = vals if acc is None else acc + vals
    assert acc is not None  # eight corners
    acc = torch.complex(acc.real, acc.imag * geom.sign)
    out = acc.new_zeros((geom.batch, n * (n // 2 + 1)))
    out[:, geom.flat] = acc.view(geom.batch, -1)
    return out.view(geom.batch, n, n // 2 + 1)


def insert_slices(slices: torch.Tensor, geom: SliceGeometry, ext_flat: torch.Tensor) -> None:
    """Add the transpose of :func:`extract_slices` into ``ext_flat``, in place.

    ``slices`` are ``(b, D, D // 2 + 1)``: complex values into a complex grid, or real values
    (e.g. CTF² weights) into a real grid (no conjugation for mirrored samples then).
    """
    vals = slices.reshape(geom.batch, -1)[:, geom.flat].reshape(-1)
    if vals.is_complex():
        vals = torch.complex(vals.real, vals.imag * geom.sign)
    vals = vals.to(ext_flat.dtype)
    for off, wgt in zip(geom.corner_offsets(), geom.corner_weights()):
        ext_flat[off:].index_add_(0, geom.base, vals * wgt.to(vals.real.dtype))


class TorchSteps:
    """Chunk steps of the Fourier-slice projector on the torch reference backend.

    The CTF and shift are one half-grid filter per chunk (:meth:`ImageFilters.half_grid`) applied
    to the slices before the inverse 2D FFT (and its conjugate after the adjoint FFT).
    Subclasses replace :meth:`raw_extract` / :meth:`raw_insert` (compiled loops) or
    :meth:`extract` / :meth:`insert` (kernels with the filters fused in).
    """

    def __init__(self, box_size: int, padded: int, gridding: bool, batch_size: int) -> None:
        self.box_size = box_size
        self.padded = padded
        self.gridding = gridding
        self.batch_size = batch_size

    # -- backend-specific inner steps
    def raw_extract(self, ext: torch.Tensor, geom: SliceGeometry) -> torch.Tensor:
        """Unfiltered slices ``(b, D, D // 2 + 1)`` of a flat extended spectrum."""
        return extract_slices(ext, geom)

    def raw_insert(self, slices: torch.Tensor, geom: SliceGeometry, acc: torch.Tensor) -> None:
        """Add the transpose of :meth:`raw_extract` into ``acc`` (complex or real values)."""
        insert_slices(slices, geom, acc)

    def extract(self, ext: torch.Tensor, geom: SliceGeometry, filters: ImageFilters):
        """``ramp(-origin) · CTF · slice`` ``(b, D, D // 2 + 1)``."""
        spectra = self.raw_extract(ext, geom)
        filt = filters.half_grid(self.box_size, ext.device, geom.rotations.dtype)
        return spectra if filt is None else spectra * filt

    def insert(self, spectra, geom: SliceGeometry, filters: ImageFilters, acc) -> None:
        """Transpose of :meth:`extract`, added into ``acc``."""
        filt = filters.half_grid(self.box_size, spectra.device, geom.rotations.dtype)
        self.raw_insert(spectra if filt is None else spectra * torch.conj(filt), geom, acc)

    # -- the ProjectorSteps protocol
    def prepare(self, volume: torch.Tensor) -> torch.Tensor:
        """Flat extended spectrum of the (gridding-corrected) volume."""
        vin = gridding_correction(volume, self.padded) if self.gridding else volume
        return ExtendedSpectrum.from_spectrum(volume_spectrum(vin, self.padded))

    def geometry(self, rotations: torch.Tensor) -> SliceGeometry:
        return slice_geometry(rotations, self.box_size, self.padded)

    def project(self, state: torch.Tensor, geom: SliceGeometry, filters: ImageFilters):
        return spectra_to_images(self.extract(state, geom, filters), self.box_size)

    def new_accumulator(self, like: torch.Tensor) -> torch.Tensor:
        cdtype = torch.complex128 if like.dtype == torch.float64 else torch.complex64
        return ExtendedSpectrum.zeros(self.padded, device=like.device, dtype=cdtype)

    def backproject(self, images, geom: SliceGeometry, filters: ImageFilters, acc) -> None:
        self.insert(images_to_spectra_adjoint(images), geom, filters, acc)

    def finish(self, acc: torch.Tensor) -> torch.Tensor:
        vol = volume_spectrum_adjoint(ExtendedSpectrum.fold(acc, self.padded), self.box_size)
        return gridding_correction(vol, self.padded) if self.gridding else vol
