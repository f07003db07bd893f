"""Fourier-slice projector (trilinear, half grid, Friedel symmetry) and its exact transpose.

- :mod:`.geometry`: the maths (padding, spectra, slice geometry, gridding correction); read its
  docstring for the sampling and normalisation contract.
- :mod:`.projector`: :class:`FourierSliceProjector` and the functions :func:`project`,
  :func:`backproject`, :func:`extract_slices`, :func:`insert_slices`.
- Backends side by side: ``_torch.py`` (reference), ``_cpu.py`` + ``_cpu_slices.c`` (compiled
  loops), ``_triton.py`` (fused kernels, imported only when chosen).
"""

from cryograd.projectors.fourier_slice.geometry import (
    ExtendedSpectrum,
    SliceGeometry,
    crop_volume,
    default_batch_size,
    extended_strides,
    gridding_correction,
    gridding_weights,
    hermitian_part_rfft,
    images_to_spectra_adjoint,
    pad_volume,
    padded_size,
    slice_geometry,
    slice_sample_positions,
    spectra_to_images,
    volume_spectrum,
    volume_spectrum_adjoint,
)
from cryograd.projectors.fourier_slice.projector import (
    FourierSliceProjector,
    backproject,
    extract_slices,
    insert_slices,
    project,
)

__all__ = [
    "FourierSliceProjector",
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
    "extract_slices",
    "insert_slices",
    "ExtendedSpectrum",
    "hermitian_part_rfft",
    "spectra_to_images",
    "images_to_spectra_adjoint",
    "project",
    "backproject",
    "default_batch_size",
]
