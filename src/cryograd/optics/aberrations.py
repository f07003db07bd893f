"""Beam tilt and Zernike aberrations as RELION's observation model applies them.

Sources (RELION 3.1 / 5.0, identical in what is used here):
``src/jaz/obs_model.cpp`` (``ObservationModel::ObservationModel``, ``getPhaseCorrection``,
``getGammaOffset``, ``predictObservation``, ``demodulatePhase``),
``src/jaz/ctf/tilt_helper.cpp`` (``TiltHelper::insertTilt`` / ``extractTilt``),
``src/jaz/math/Zernike.cpp`` and ``src/ctf.h`` (``CTF::getCTF``).

Antisymmetric (odd) aberrations. ``rlnBeamTiltX/Y`` (mrad) are folded into the odd Zernike list by
``insertTilt`` (``Z3x = −π·20000·Cs·λ²·tx/3``; ``c[1] += 2 Z3x``, ``c[4] += Z3x``, and likewise
``c[0]``, ``c[3]`` with ``ty``), which amounts to the phase ``−2π·10⁴·Cs·λ²·|k|²·(k·t)`` (Cs in mm,
λ in Å, ``k`` in 1/Å, ``t`` in mrad). The phase ``φ(k) = Σ_i c_i Z_i(M k)`` of the odd list, on the
frequency ``M k`` magnified by the optics group's ``rlnMagMat``, gives the unit-modulus factor
``exp(iφ)``: RELION multiplies a *prediction* (after the shift and the CTF) by ``exp(iφ)``
(``predictObservation``) and an *observation* by ``exp(−iφ)`` (``demodulatePhase``) before
back-projecting it.

Symmetric (even) aberrations. ``Σ_i e_i Z_i(M k)`` over ``rlnEvenZernike`` is *added* to the CTF's
phase ``γ`` (``CTF::getCTF``: ``γ = K1·Δf-term + K2·|k|⁴ − K5 − K3 + gammaOffset``), so with
cryograd's (RELION's) sign ``CTF = −sin(γ + offset)``.
"""

from __future__ import annotations

import torch

from cryograd.optics.magnification import magnify_frequencies
from cryograd.optics.zernike import zernike_phase

__all__ = [
    "RELION_PI",
    "insert_beam_tilt",
    "extract_beam_tilt",
    "beam_tilt_phase",
    "odd_aberration_phase",
    "even_aberration_phase",
    "aberration_factor",
]

#: The value of π RELION hard-codes in ``TiltHelper::insertTilt``.
RELION_PI = 3.141592654


def _tilt_scale(cs_mm: torch.Tensor, wavelength: torch.Tensor) -> torch.Tensor:
    # RELION: scale = Cs * 20000 * lambda * lambda * 3.141592654  (rad · Å² per (1/Å)³ per mrad)
    return cs_mm * 20000.0 * wavelength * wavelength * RELION_PI


def _as(x, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def insert_beam_tilt(
    odd_coefficients: torch.Tensor,
    tilt_x_mrad: torch.Tensor | float,
    tilt_y_mrad: torch.Tensor | float,
    cs_mm: torch.Tensor | float,
    wavelength_angstrom: torch.Tensor | float,
    replace_coma: bool = False,
) -> torch.Tensor:
    """Fold a beam tilt into an odd Zernike list, as ``TiltHelper::insertTilt`` does.

    Parameters
    ----------
    odd_coefficients
        ``(..., c)`` ``rlnOddZernike`` values (``c`` may be 0); lists shorter than 6 are padded
        with zeros (RELION pads to 6 when the column is absent, to 5 otherwise; the extra zero
        changes nothing).
    tilt_x_mrad, tilt_y_mrad
        ``rlnBeamTiltX/Y`` in mrad, scalars or ``(...)``.
    cs_mm
        ``rlnSphericalAberration`` in mm.
    wavelength_angstrom
        Electron wavelength in Å.
    replace_coma
        False: add the tilt's coma to terms 3 and 4, as RELION's source (3.1 to 5.0) reads. True:
        replace terms 3 and 4 by it, which is what the ``relion_reconstruct`` of Debian's RELION
        3.1.3 was measured to do (see ``tests/test_optics_relion.py``). RELION writes odd lists
        with terms 3 and 4 zero next to a beam tilt (``extractTilt``), so both agree on its files.

    Returns
    -------
    torch.Tensor
        ``(..., max(c, 6))`` odd coefficients including the tilt.
    """
    odd = torch.as_tensor(odd_coefficients)
    if not odd.is_floating_point():
        odd = odd.double()
    tx, ty = _as(tilt_x_mrad, odd), _as(tilt_y_mrad, odd)
    scale = _tilt_scale(_as(cs_mm, odd), _as(wavelength_angstrom, odd))
    z3x, z3y = -scale * tx / 3.0, -scale * ty / 3.0
    batch = torch.broadcast_shapes(odd.shape[:-1], z3x.shape, z3y.shape)
    out = torch.zeros(*batch, max(odd.shape[-1], 6), dtype=odd.dtype, device=odd.device)
    out[..., : odd.shape[-1]] = odd
    out[..., 1] += 2.0 * z3x
    out[..., 0] += 2.0 * z3y
    if replace_coma:
        out[..., 4] = z3x
        out[..., 3] = z3y
    else:
        out[..., 4] += z3x
        out[..., 3] += z3y
    return out


def extract_beam_tilt(
    odd_coefficients: torch.Tensor,
    cs_mm: torch.Tensor | float,
    wavelength_angstrom: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`insert_beam_tilt` (``TiltHelper::extractTilt``).

    Returns
    -------
    tuple
        ``(odd, tilt_x_mrad, tilt_y_mrad)``: the ``(..., max(c, 5))`` list with the coma terms
        3 and 4 zeroed (as RELION writes ``rlnOddZernike`` after CTF refinement) and the tilt.
    """
    odd = torch.as_tensor(odd_coefficients)
    if not odd.is_floating_point():
        odd = odd.double()
    out = torch.zeros(*odd.shape[:-1], max(odd.shape[-1], 5), dtype=odd.dtype, device=odd.device)
    out[..., : odd.shape[-1]] = odd
    scale = _tilt_scale(_as(cs_mm, odd), _as(wavelength_angstrom, odd))
    z3x, z3y = out[..., 4].clone(), out[..., 3].clone()
    out[..., 4] = 0.0
    out[..., 3] = 0.0
    out[..., 1] -= 2.0 * z3x
    out[..., 0] -= 2.0 * z3y
    return out, -3.0 * z3x / scale, -3.0 * z3y / scale


def beam_tilt_phase(
    kx: torch.Tensor,
    ky: torch.Tensor,
    tilt_x_mrad: torch.Tensor | float,
    tilt_y_mrad: torch.Tensor | float,
    cs_mm: torch.Tensor | float,
    wavelength_angstrom: torch.Tensor | float,
) -> torch.Tensor:
    """Phase (radians) of a pure beam tilt: ``−π·20000·Cs·λ²·|k|²·(tx·kx + ty·ky)``.

    Parameters
    ----------
    kx, ky
        Frequencies in 1/Å, ``(..., h, w)`` (already magnified if the group has a mag matrix).
    tilt_x_mrad, tilt_y_mrad, cs_mm, wavelength_angstrom
        Scalars or ``(...)`` per particle (mrad, mrad, mm, Å).

    Returns
    -------
    torch.Tensor
        ``(..., h, w)`` phase; equal to :func:`odd_aberration_phase` of the tilt alone.
    """

    def per(x):
        x = _as(x, kx)
        return x[..., None, None] if x.dim() else x

    scale = _tilt_scale(per(cs_mm), per(wavelength_angstrom))
    return -scale * (kx * kx + ky * ky) * (per(tilt_x_mrad) * kx + per(tilt_y_mrad) * ky)


def odd_aberration_phase(
    kx: torch.Tensor,
    ky: torch.Tensor,
    odd_coefficients: torch.Tensor | None = None,
    beam_tilt_mrad: tuple | None = None,
    cs_mm: torch.Tensor | float | None = None,
    wavelength_angstrom: torch.Tensor | float | None = None,
    mag_matrix: torch.Tensor | None = None,
    replace_coma: bool = False,
) -> torch.Tensor:
    """RELION's antisymmetric phase ``φ(k)`` (``ObservationModel::getPhaseCorrection``).

    Parameters
    ----------
    kx, ky
        Detector frequencies in 1/Å, ``(h, w)`` or ``(b, h, w)``.
    odd_coefficients
        ``(c,)`` or ``(b, c)`` ``rlnOddZernike`` values, or None.
    beam_tilt_mrad
        ``(tilt_x, tilt_y)`` in mrad (scalars or ``(b,)``), or None. Needs ``cs_mm`` and
        ``wavelength_angstrom``.
    cs_mm, wavelength_angstrom
        Spherical aberration (mm) and wavelength (Å), scalars or ``(b,)``.
    mag_matrix
        ``(2, 2)`` or ``(b, 2, 2)`` ``rlnMagMat``; the series is evaluated at ``M k``.
    replace_coma
        See :func:`insert_beam_tilt`.

    Returns
    -------
    torch.Tensor
        ``(..., h, w)`` phase in radians (zeros when there is nothing to apply).
    """
    odd = (
        torch.zeros(0, dtype=kx.dtype, device=kx.device)
        if odd_coefficients is None
        else _as(odd_coefficients, kx)
    )
    if beam_tilt_mrad is not None:
        if cs_mm is None or wavelength_angstrom is None:
            raise ValueError("a beam tilt needs cs_mm and wavelength_angstrom")
        tilt_x, tilt_y = beam_tilt_mrad
        odd = insert_beam_tilt(odd, tilt_x, tilt_y, cs_mm, wavelength_angstrom, replace_coma)
    if mag_matrix is not None:
        kx, ky = magnify_frequencies(kx, ky, mag_matrix)
    return zernike_phase(odd, kx, ky, "odd")


def even_aberration_phase(
    kx: torch.Tensor,
    ky: torch.Tensor,
    even_coefficients: torch.Tensor,
    mag_matrix: torch.Tensor | None = None,
) -> torch.Tensor:
    """RELION's symmetric phase offset added to the CTF's ``γ`` (``getGammaOffset``).

    Parameters
    ----------
    kx, ky
        Detector frequencies in 1/Å, ``(h, w)`` or ``(b, h, w)``.
    even_coefficients
        ``(c,)`` or ``(b, c)`` ``rlnEvenZernike`` values (radians · Å^n).
    mag_matrix
        ``(2, 2)`` or ``(b, 2, 2)``; the series is evaluated at ``M k``.

    Returns
    -------
    torch.Tensor
        ``(..., h, w)`` offset in radians: the CTF becomes ``−sin(γ(M k) + offset)``.
    """
    if mag_matrix is not None:
        kx, ky = magnify_frequencies(kx, ky, mag_matrix)
    return zernike_phase(_as(even_coefficients, kx), kx, ky, "even")


def aberration_factor(phase: torch.Tensor, observation: bool = False) -> torch.Tensor:
    """Unit-modulus factor for an odd-aberration phase.

    Parameters
    ----------
    phase
        ``(..., h, w)`` from :func:`odd_aberration_phase`.
    observation
        False: ``exp(+iφ)``, multiplied into a *prediction* after shift and CTF
        (``predictObservation``). True: ``exp(−iφ)``, multiplied into an *observed* spectrum before
        CTF weighting and insertion (``demodulatePhase``).

    Returns
    -------
    torch.Tensor
        ``(..., h, w)`` complex, ``|·| = 1``.
    """
    return torch.polar(torch.ones_like(phase), -phase if observation else phase)
