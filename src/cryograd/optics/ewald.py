"""Pieces of RELION's Ewald-sphere correction (``relion_reconstruct --ewald``).

What ``Reconstructor::backprojectOneParticle`` does with ``--ewald`` (RELION 3.1,
``src/reconstructor.cpp``). It refuses premultiplied data ("We cannot perform Ewald sphere
correction on CTF premultiplied particles.") when ``rlnCtfDataAreCtfPremultiplied = 1``.

1. Demodulate the odd aberrations of the observed spectrum ``X`` (``demodulatePhase``), as
   without ``--ewald``; do *not* fold the mag matrix into ``A`` (the back-projector gets it).
2. ``applyCTFPandCTFQ``: for each of ``--sectors`` ``S`` (default 2) angles
   ``α = 0, 180/S, …`` and each of two passes (P: ``is_positive = !reverse``; Q:
   ``is_positive = reverse``), multiply ``X`` by :func:`ctfp_sector_image`
   (``CTF::getCTFPImage``), inverse-transform, apply a soft circular mask of radius
   ``round(mask_diameter / (2 · pixel))`` px with a cosine edge of ``--width_mask_edge``
   (default 3) px (``softMaskOutsideMap``; skipped with ``--skip_mask``), transform back, and keep
   the pixels whose angle to +y (``acos(ky/|k|)``) lies within ``α + 90° ± 90°/S``, in P (first
   pass) or Q (second pass), swapped past 180° (:func:`sector_assignment`).
3. Weight ``W = ½ (1 + A (2 |CTF| − 1))``, squared (:func:`ewald_weight`,
   ``applyWeightEwaldSphereCurvature_noAniso``; ``W = CTF`` with ``--skip_weighting``).
4. Back-project P on the sphere of positive curvature and Q on the negative one, both with
   weight ``W²``: detector frequency ``k`` (pixels) goes to ``Ainv · (M k, ±|M k|² / (2 r))``
   with ``r = N · pixel / λ`` px (:func:`ewald_radius_pixels`, :func:`ewald_offset`) and ``Ainv``
   the inverse of RELION's scaled, unmagnified ``A``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "EwaldSettings",
    "ewald_radius_pixels",
    "ewald_offset",
    "ctf_p",
    "ctfp_sector_image",
    "sector_assignment",
    "ewald_weight",
]


@dataclass(frozen=True)
class EwaldSettings:
    """``relion_reconstruct --ewald`` and its options.

    Attributes
    ----------
    mask_diameter_angstrom
        ``--mask_diameter`` (Å): the soft circular mask of each CTFP-multiplied image and the
        particle size in the weight :func:`ewald_weight`.
    sectors
        ``--sectors`` (2): angular sectors of the P/Q split.
    reverse_curvature
        ``--reverse_curvature``: swap the curvature sign of the P and Q images.
    mask_edge_px
        ``--width_mask_edge`` (3 px): the mask's raised-cosine edge.
    """

    mask_diameter_angstrom: float
    sectors: int = 2
    reverse_curvature: bool = False
    mask_edge_px: float = 3.0


def ewald_radius_pixels(
    box_size: int, pixel_size: float, wavelength_angstrom: torch.Tensor | float
) -> torch.Tensor:
    """Ewald-sphere radius in Fourier pixels of the image grid: ``N · pixel / λ``."""
    return box_size * pixel_size / torch.as_tensor(wavelength_angstrom, dtype=torch.float64)


def ewald_offset(
    xu: torch.Tensor, yu: torch.Tensor, radius_pixels: torch.Tensor | float, positive: bool = True
) -> torch.Tensor:
    """Out-of-plane coordinate ``±(xu² + yu²) / (2 r)`` (``BackProjector::backproject2Dto3D``).

    Parameters
    ----------
    xu, yu
        ``(..., h, w)`` magnified detector frequencies in pixels (``M k``).
    radius_pixels
        :func:`ewald_radius_pixels` (scalar or ``(...)``); ``<= 0`` turns the curvature off.
    positive
        Sign of the curvature (P: True, Q: False, unless ``--reverse_curvature``).

    Returns
    -------
    torch.Tensor
        ``(..., h, w)`` third coordinate, in pixels, to rotate with ``Ainv`` like ``(xu, yu)``.
    """
    r = torch.as_tensor(radius_pixels, dtype=xu.dtype, device=xu.device)
    r = r[..., None, None] if r.dim() else r
    inv_diam = torch.where(r > 0, 1.0 / (2.0 * r), torch.zeros_like(r))
    return (inv_diam if positive else -inv_diam) * (xu * xu + yu * yu)


def ctf_p(gamma: torch.Tensor, positive: bool) -> torch.Tensor:
    """``CTF::getCTFP``: ``−sin γ + i cos γ = i e^{iγ}`` or ``−sin γ − i cos γ = −i e^{−iγ}``.

    ``γ`` is RELION's full CTF phase (including the even-Zernike offset, at ``M k``).
    """
    return torch.complex(-torch.sin(gamma), torch.cos(gamma) if positive else -torch.cos(gamma))


def ctfp_sector_image(
    gamma: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, positive: bool, angle_degrees: float
) -> torch.Tensor:
    """``CTF::getCTFPImage`` on a half grid in torch's layout.

    Parameters
    ----------
    gamma
        ``(..., N, N // 2 + 1)`` CTF phase.
    kx, ky
        ``(N, N // 2 + 1)`` frequencies (any unit; only their direction is used).
    positive
        ``is_positive`` of the pass.
    angle_degrees
        Sector angle in ``[0, 360)``.

    Returns
    -------
    torch.Tensor
        ``(..., N, N // 2 + 1)`` complex: :func:`ctf_p` with ``positive`` where the angle of ``k``
        to +y is ``>= angle``, with ``not positive`` elsewhere; for angle 0, the negative-``ky``
        half of the ``kx = 0`` column is the conjugate of its positive half (Friedel symmetry).
    """
    if not 0.0 <= angle_degrees < 360.0:
        raise ValueError("CTFP sector angle must be in [0, 360)")
    if angle_degrees >= 180.0:
        angle_degrees -= 180.0
        positive = not positive
    r = torch.sqrt(kx * kx + ky * ky)
    my_angle = torch.where(r > 0, torch.acos((ky / torch.where(r > 0, r, 1.0)).clamp(-1, 1)), 0.0)
    use_pos = my_angle >= math.radians(angle_degrees)
    out = torch.where(use_pos, ctf_p(gamma, positive), ctf_p(gamma, not positive))
    if angle_degrees == 0.0:
        n = out.shape[-2]
        rows = torch.arange(n // 2 + 1, n, device=out.device)
        out[..., rows, 0] = out[..., n - rows, 0].conj()
    return out


def sector_assignment(
    kx: torch.Tensor, ky: torch.Tensor, nr_sectors: int = 2
) -> list[tuple[float, torch.Tensor, torch.Tensor, bool]]:
    """Which pixels each CTFP pass writes to P or Q (the loop of ``applyCTFPandCTFQ``).

    Returns
    -------
    list
        One ``(angle_degrees, mask_a, mask_b, swapped)`` per sector, masks ``(N, N // 2 + 1)``
        booleans over the angle ``acos(ky/|k|)`` to +y. Pass 0 writes ``mask_a`` pixels into P
        (into Q when ``swapped``) and ``mask_b`` pixels into the other one; pass 1 does the
        opposite. ``mask_b`` is non-empty only when the sector straddles 180°.
    """
    step = 180.0 / nr_sectors
    r = torch.sqrt(kx * kx + ky * ky)
    ang = torch.where(r > 0, torch.acos((ky / torch.where(r > 0, r, 1.0)).clamp(-1, 1)), 0.0)
    out = []
    for s in range(nr_sectors):
        angle = s * step
        lo, hi = angle + 90.0 - 0.5 * step, angle + 90.0 + 0.5 * step
        swapped = lo >= 180.0
        if swapped:
            lo, hi = lo - 180.0, hi - 180.0
        wrap = lo < 180.0 < hi
        if wrap:
            hi -= 180.0
        lo_r, hi_r = math.radians(lo), math.radians(hi)
        if wrap:
            out.append((angle, ang >= lo_r, (ang < hi_r) & (ang < lo_r), swapped))
        else:
            none = torch.zeros_like(ang, dtype=torch.bool)
            out.append((angle, (ang >= lo_r) & (ang < hi_r), none, swapped))
    return out


def ewald_weight(
    ctf: torch.Tensor,
    defocus_angstrom: torch.Tensor,
    k_abs: torch.Tensor,
    wavelength_angstrom: torch.Tensor | float,
    particle_diameter_angstrom: float,
) -> torch.Tensor:
    """``CTF::applyWeightEwaldSphereCurvature_noAniso``: ``W = ½ (1 + A (2 |CTF| − 1))``.

    Parameters
    ----------
    ctf
        ``(..., h, w)`` RELION CTF values (with damping, as ``getCTF`` returns them).
    defocus_angstrom
        ``(..., h, w)`` astigmatic defocus ``Δf(θ)`` at each frequency (its absolute value is used).
    k_abs
        ``(..., h, w)`` ``|k|`` in 1/Å.
    wavelength_angstrom
        λ in Å.
    particle_diameter_angstrom
        ``--mask_diameter``.

    Returns
    -------
    torch.Tensor
        ``(..., h, w)`` ``W``; RELION back-projects with weight ``W²``.
    """
    aux = 2.0 * defocus_angstrom.abs() * wavelength_angstrom * k_abs / particle_diameter_angstrom
    a = torch.acos(aux.clamp(max=1.0))
    area = torch.where(aux > 1.0, torch.zeros_like(aux), (2.0 / math.pi) * (a - aux * torch.sin(a)))
    return 0.5 * (1.0 + area * (2.0 * ctf.abs() - 1.0))
