"""Ewald-sphere correction of the Fourier insertion, as ``relion_reconstruct --ewald`` does it.

``Reconstructor::backprojectOneParticle`` with ``--ewald`` (RELION 3.1 ``src/reconstructor.cpp``,
``BackProjector::backproject2Dto3D``), per particle:

1. the image spectrum ``X`` is shifted by ``+origin`` and demodulated (``exp(−iφ)`` of the odd
   aberrations), as without ``--ewald``;
2. ``applyCTFPandCTFQ``: for each of ``S`` sectors and each of two passes, ``X · CTFP`` (``CTFP =
   −sin γ ± i cos γ`` per half plane, :func:`~cryograd.optics.ewald.ctfp_sector_image`) is
   transformed back, masked by :func:`soft_mask_outside` (radius ``round(d / (2 · pixel))`` px,
   ``d`` = ``--mask_diameter``), transformed again, and its pixels of the sector go into the
   image ``P`` or ``Q`` (:func:`~cryograd.optics.ewald.sector_assignment`);
3. the weight is ``W²`` with ``W`` :func:`~cryograd.optics.ewald.ewald_weight` of the CTF;
4. ``P`` is inserted on the sphere of positive curvature, ``Q`` on the negative one: pixel ``k``
   at ``s Aᵀ (M k, ±|M k|² / (2 r))``, ``r = D · pixel / λ`` px (the slice matrices of
   :class:`~cryograd.optics.particles.ParticleOptics` with an out-of-plane offset,
   :class:`~cryograd.projectors.fourier_slice.geometry.SliceGeometry`), both with ``W²``;
   RELION stores the half image only: the ``kx = 0`` column enters for ``ky >= 0`` only.

The sums then go through the usual division (:mod:`cryograd.solvers.direct`). Premultiplied
images are refused, as RELION refuses them. This runs on the torch reference insertion.
"""

from __future__ import annotations

import math

import torch

from cryograd.ctf import ctf_from_frequencies, ctf_phase, electron_wavelength_angstrom
from cryograd.errors import CryogradError
from cryograd.fourier import frequency_grid_2d, rfft2_centered
from cryograd.optics.ewald import (
    EwaldSettings,
    ctfp_sector_image,
    ewald_offset,
    ewald_radius_pixels,
    ewald_weight,
    sector_assignment,
)
from cryograd.projectors.fourier_slice import _torch
from cryograd.projectors.fourier_slice.geometry import (
    SliceGeometry,
    slice_sample_positions,
    spectra_to_images,
)
from cryograd.shift import phase_ramp

__all__ = ["soft_mask_outside", "ctfp_split", "insert_ewald", "PREMULTIPLIED_MESSAGE"]

PREMULTIPLIED_MESSAGE = "cannot correct for the Ewald sphere on CTF-premultiplied particles"


def soft_mask_outside(images: torch.Tensor, radius: float, width: float) -> torch.Tensor:
    """RELION's ``softMaskOutsideMap`` of ``(b, N, N)`` images (centre ``N // 2``): 1 inside
    ``radius`` px, a raised cosine over ``width`` px, the outside replaced by its (cosine-
    weighted) mean."""
    n = images.shape[-1]
    c = torch.arange(n, device=images.device, dtype=images.dtype) - n // 2
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)
    outer = radius + width
    raised = torch.where(
        r > outer,
        torch.ones_like(r),
        torch.where(
            r < radius, torch.zeros_like(r), 0.5 + 0.5 * torch.cos(math.pi * (outer - r) / width)
        ),
    )  # (N, N) weight of the background
    total = float(raised.sum())
    if total <= 0:  # nothing outside the mask
        return images
    bg = (images * raised).sum((-2, -1), keepdim=True) / total
    return images * (1.0 - raised) + bg * raised


def ctfp_split(
    spectra: torch.Tensor, gamma: torch.Tensor, settings: EwaldSettings, radius_px: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images ``(P, Q)`` of ``applyCTFPandCTFQ``, each ``(b, N, N // 2 + 1)`` complex.

    Parameters
    ----------
    spectra
        ``(b, N, N // 2 + 1)`` shifted, demodulated image spectra.
    gamma
        ``(b, N, N // 2 + 1)`` CTF phase.
    settings
        Sectors, curvature sign and mask edge.
    radius_px
        Mask radius in pixels (``round(mask_diameter / (2 · pixel))``).
    """
    n = spectra.shape[-2]
    kx, ky = frequency_grid_2d(n, rfft=True, device=spectra.device, dtype=torch.float64)
    out_p, out_q = torch.zeros_like(spectra), torch.zeros_like(spectra)
    for angle, mask_a, mask_b, swapped in sector_assignment(kx, ky, settings.sectors):
        for ipass in (0, 1):
            positive = settings.reverse_curvature if ipass == 1 else not settings.reverse_curvature
            ctfp = ctfp_sector_image(gamma, kx, ky, positive, angle).to(spectra.dtype)
            image = spectra_to_images(spectra * ctfp, n)
            app = rfft2_centered(soft_mask_outside(image, radius_px, settings.mask_edge_px))
            first, second = (out_p, out_q) if (ipass == 0) != swapped else (out_q, out_p)
            first[..., mask_a] = app[..., mask_a]
            second[..., mask_b] = app[..., mask_b]
    return out_p, out_q


def _relion_columns(n: int, device, dtype) -> torch.Tensor:
    """``(N, N // 2 + 1)`` 1, but 0 on the ``kx = 0`` column's rows ``ky < 0`` (RELION
    back-projects that column once, from its ``ky >= 0`` half)."""
    w = torch.ones((n, n // 2 + 1), device=device, dtype=dtype)
    w[n // 2 + 1 :, 0] = 0.0
    return w


def insert_ewald(
    batch, settings: EwaldSettings, reference_pixel: float, grids, padded: int, symmetry=None
) -> None:
    """Add one batch's Ewald-corrected sums into ``grids = (numerator, weights)`` (flat
    extended accumulators, complex and real), in place.

    Parameters
    ----------
    batch
        :class:`~cryograd.solvers.batches.ParticleBatch` loaded with CTF parameters
        (``ctf_values=False``).
    settings
        ``--ewald`` options.
    reference_pixel
        The reconstruction's pixel size (RELION's ``angpix``: the mask radius).
    padded
        ``P``.
    symmetry
        None or ``(G, 3, 3)``: each particle is also inserted at ``A Rᵀ``.
    """
    if batch.ctf_params is None:
        raise CryogradError("--ewald needs CTF parameters (and no --no-ctf)")
    if bool(batch.premultiplied.any()):
        raise CryogradError(PREMULTIPLIED_MESSAGE)
    images = batch.images
    b, n = images.shape[0], images.shape[-1]
    dtype, device = images.dtype, images.device
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    spectra = rfft2_centered(images.double()).to(torch.complex128)
    if batch.shifts_px is not None:
        spectra = spectra * phase_ramp(batch.shifts_px.double(), n, dtype=torch.float64)
    optics, params = batch.optics, batch.ctf_params
    kx, ky = frequency_grid_2d(n, rfft=True, device=device, dtype=torch.float64)
    if optics is not None:
        spectra = spectra * torch.conj(optics.image_factor(n, device=device, dtype=torch.float64))
        sx, sy, offset = optics.specimen_frequencies(n, device=device)
        mag = optics.ctf_magnification().to(device)
        pixel = optics.pixel_size_angstrom[optics.group.cpu()].to(device)
        ctf = optics.ctf_values(params, n, device=device, dtype=torch.float64)
        rotations = optics.slice_matrices(batch.rotations.double())
        scale = optics.grid_scale[optics.group.cpu()].to(device)
    else:
        pixel = batch.pixel_sizes_angstrom.to(device=device, dtype=torch.float64)
        inv = (1.0 / (n * pixel))[:, None, None]
        sx, sy, offset = kx * inv, ky * inv, None
        mag = torch.eye(2, dtype=torch.float64, device=device).expand(b, 2, 2)
        ctf = ctf_from_frequencies(params.to(device=device), sx, sy, per_particle=True)
        rotations = batch.rotations.double()
        scale = torch.ones(b, dtype=torch.float64, device=device)
    gamma, defocus = ctf_phase(
        params.to(device=device), sx, sy, per_particle=True, gamma_offset=offset
    )
    radius = math.floor(settings.mask_diameter_angstrom / (2.0 * reference_pixel) + 0.5)  # ROUND
    out_p, out_q = ctfp_split(spectra, gamma, settings, radius)
    lam = electron_wavelength_angstrom(params.voltage_kv.to(device=device, dtype=torch.float64))
    weight = (
        ewald_weight(
            ctf,
            defocus,
            torch.sqrt(sx * sx + sy * sy),
            lam[:, None, None],
            settings.mask_diameter_angstrom,
        )
        ** 2
    )
    # magnified detector frequencies (px) of each particle and the Ewald radius (px)
    mx = mag[:, 0, 0, None, None] * kx + mag[:, 0, 1, None, None] * ky
    my = mag[:, 1, 0, None, None] * kx + mag[:, 1, 1, None, None] * ky
    r_px = ewald_radius_pixels(n, 1.0, lam) * pixel  # D · pixel / λ
    cols = _relion_columns(n, device, torch.float64)
    numerator, weights = grids
    flat = slice_sample_positions(n, device=device)[2]
    ops = [None] if symmetry is None else list(symmetry.to(device=device, dtype=torch.float64))
    for image, positive in ((out_p, True), (out_q, False)):
        z = ewald_offset(mx, my, r_px, positive)  # (b, N, W) px
        radial = scale[:, None, None] ** 2 * (mx * mx + my * my + z * z)
        keep = cols * (radial <= (n // 2) ** 2).double()
        for op in ops:
            rot = rotations if op is None else rotations @ op.transpose(-1, -2)
            offsets = z.reshape(b, -1)[:, flat].to(dtype)
            geom = SliceGeometry(rot.to(dtype), n, padded, offsets)
            _torch.insert_slices((image * keep).to(cdtype), geom, numerator)
            _torch.insert_slices((weight * keep).to(dtype), geom, weights)
