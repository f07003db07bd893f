"""Optics groups of another box size: their images brought onto the reference box.

RELION inserts an image of box ``N_g`` and pixel ``p_g`` as it is: its Fourier pixel ``k`` is the
specimen frequency ``k / (N_g p_g)`` and lands at ``k · (N_ref p_ref) / (N_g p_g)`` on the
reference grid (``applyScaleDifference`` in ``obs_model.cpp``). cryograd batches images of one
box, so an image of another box is first resampled to the reference box ``N_ref`` keeping
exactly those Fourier samples:

1. if its field of view ``N_g p_g`` is wider than the map's ``N_ref p_ref``, it is cropped in
   real space (about its centre ``N // 2``) to ``N_c = ceil(N_ref p_ref / p_g)`` pixels: the part
   it loses lies outside the box the map represents;
2. its centred spectrum is cropped or zero-padded from ``N_c`` to ``N_ref`` (Fourier
   interpolation), pixel values preserved: the result is an ``N_ref`` image of pixel
   ``p' = N_c p_g / N_ref`` whose Fourier pixel ``k`` is the same sample ``k / (N_c p_g)``.

A padded spectrum holds zeros beyond the group's own band, ``|k| ≥ N_c / 2``; those pixels are
left out of every model term (:attr:`GroupSampling.band_radius`, the optics keep mask), as
RELION never had them. Shifts in Å, the CTF, the aberrations and the slice scale then all follow
from ``p'`` (:func:`~cryograd.optics.reference_grid_scale` gives RELION's factor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["GroupSampling", "group_sampling", "resample_images"]


@dataclass(frozen=True)
class GroupSampling:
    """How the images of one optics group are brought onto the reference box.

    Attributes
    ----------
    crop_box
        ``N_c``: the side, in the group's own pixels, kept by the real-space crop (the group's box
        when nothing is cropped).
    image_pixel_angstrom
        ``p' = N_c p_g / N_ref``: the pixel size of the resampled ``N_ref`` images, Å.
    band_radius
        The group's own band in Fourier pixels of the resampled images, ``N_c / 2`` when the
        spectrum was padded (pixels at or beyond it are left out), else ``inf``.
    """

    crop_box: int
    image_pixel_angstrom: float
    band_radius: float


def group_sampling(
    box_size: int, pixel_size_angstrom: float, reference_box: int, reference_pixel_angstrom: float
) -> GroupSampling:
    """The :class:`GroupSampling` of a group of ``box_size`` px at ``pixel_size_angstrom`` Å for
    a map of ``reference_box`` px at ``reference_pixel_angstrom`` Å."""
    fov, ref_fov = box_size * pixel_size_angstrom, reference_box * reference_pixel_angstrom
    crop = box_size
    if fov > ref_fov * (1 + 1e-9):
        crop = min(box_size, math.ceil(ref_fov / pixel_size_angstrom - 1e-6))
    pixel = crop * pixel_size_angstrom / reference_box
    band = crop / 2 if crop < reference_box else math.inf
    return GroupSampling(int(crop), float(pixel), float(band))


def _centre_window(n_in: int, n_out: int) -> tuple[slice, slice]:
    """Index ranges of the common centred part of an ``n_in`` and an ``n_out`` axis (centre at
    ``n // 2``): ``(input slice, output slice)``."""
    half = min(n_in, n_out)
    start_in, start_out = n_in // 2 - half // 2, n_out // 2 - half // 2
    return slice(start_in, start_in + half), slice(start_out, start_out + half)


def resample_images(images: np.ndarray, crop_box: int, out_box: int) -> np.ndarray:
    """Crop ``images`` to ``crop_box`` in real space, then Fourier-resample them to ``out_box``.

    Parameters
    ----------
    images
        ``(b, N, N)`` images, centre at pixel ``N // 2``.
    crop_box
        ``N_c ≤ N`` (:attr:`GroupSampling.crop_box`).
    out_box
        ``N_ref``.

    Returns
    -------
    np.ndarray
        ``(b, N_ref, N_ref)`` float32, centre at ``N_ref // 2``: the same function of position
        (pixel values preserved) sampled at ``N_c / N_ref`` of the input pixel. Its DFT equals the
        cropped image's DFT times ``(N_ref / N_c)²`` at every frequency both hold (the Nyquist
        row and column of an even ``N_c`` are dropped when padding).
    """
    n = images.shape[-1]
    rows, _ = _centre_window(n, crop_box)
    cropped = np.asarray(images[..., rows, rows], dtype=np.float64)  # (b, N_c, N_c)
    if crop_box == out_box:
        return cropped.astype(np.float32)
    spec = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(cropped, axes=(-2, -1))), axes=(-2, -1))
    if crop_box < out_box and crop_box % 2 == 0:
        spec[..., 0, :] = 0.0  # the lone Nyquist row/column: no conjugate partner once padded
        spec[..., :, 0] = 0.0
    src, dst = _centre_window(crop_box, out_box)
    out = np.zeros(images.shape[:-2] + (out_box, out_box), dtype=np.complex128)
    out[..., dst, dst] = spec[..., src, src]
    if out_box < crop_box and out_box % 2 == 0:
        out[..., 0, :] = 0.0  # the new Nyquist row/column from one side only: leave it out
        out[..., :, 0] = 0.0
    back = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(out, axes=(-2, -1))), axes=(-2, -1))
    return (back.real * (out_box / crop_box) ** 2).astype(np.float32)
