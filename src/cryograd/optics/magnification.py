"""Anisotropic magnification and per-optics-group pixel/box rescaling, as RELION applies them.

``rlnMagMat00..11`` form ``M``. A detector frequency ``k = (kx, ky)`` of an image of the group is
the true frequency ``M k`` of the specimen: RELION evaluates the CTF at ``M k`` (``CTF::getCTF``),
the Zernike series at ``M k`` (``ObservationModel::getPhaseCorrection``, ``getGammaOffset``), and
projects/back-projects with ``A' = M₃⁻¹ A`` (``ObservationModel::applyAnisoMag``, ``M₃`` is ``M``
padded to 3×3 with a 1), whose inverse (what the projector applies to ``(kx, ky, 0)``) is ``Aᵀ
M₃``: the 3D sample of detector frequency ``k`` is ``Aᵀ (M k, 0)``.

Optics groups with another pixel size or box are mapped onto the reference grid (the first group's
pixel size and the output box, ``applyScaleDifference``): ``A' *= (N_g p_g) / (N_ref p_ref)``, i.e.
integer frequency ``k`` of the group's image sits at ``k · (N_ref p_ref) / (N_g p_g)`` on the
reference grid (both are the same physical frequency ``k / (N_g p_g)`` 1/Å).
"""

from __future__ import annotations

import torch

__all__ = [
    "mag_matrix",
    "check_mag_matrix",
    "magnify_frequencies",
    "aniso_mag_rotation",
    "projection_matrix",
    "reference_grid_scale",
]


def mag_matrix(m00, m01, m10, m11, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Stack ``rlnMagMat00, 01, 10, 11`` (scalars or ``(g,)``) into ``(..., 2, 2)`` [row, col]."""
    vals = torch.broadcast_tensors(
        *[torch.as_tensor(v, dtype=dtype, device=device) for v in (m00, m01, m10, m11)]
    )
    return torch.stack(vals, dim=-1).reshape(*vals[0].shape, 2, 2)


def check_mag_matrix(matrix: torch.Tensor, min_abs_det: float = 1e-6) -> None:
    """Raise ``ValueError`` if any ``(..., 2, 2)`` matrix is non-finite or singular."""
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError("magnification matrix has non-finite entries")
    det = torch.linalg.det(matrix.double())
    if bool((det.abs() < min_abs_det).any()):
        bad = float(det.flatten()[det.flatten().abs().argmin()])
        raise ValueError(f"magnification matrix is singular (determinant {bad:g})")


def magnify_frequencies(
    kx: torch.Tensor, ky: torch.Tensor, matrix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M k)``: ``(M00 kx + M01 ky, M10 kx + M11 ky)`` (RELION's ``magnify``).

    Parameters
    ----------
    kx, ky
        ``(..., h, w)`` frequencies (any unit).
    matrix
        ``(2, 2)`` or ``(b, 2, 2)``; a batch dimension broadcasts against ``kx``'s leading one.

    Returns
    -------
    tuple of torch.Tensor
        Magnified ``(kx', ky')``, ``(..., h, w)``.
    """
    m = torch.as_tensor(matrix, dtype=kx.dtype, device=kx.device)
    m00, m01 = m[..., 0, 0, None, None], m[..., 0, 1, None, None]
    m10, m11 = m[..., 1, 0, None, None], m[..., 1, 1, None, None]
    return m00 * kx + m01 * ky, m10 * kx + m11 * ky


def _pad3(matrix: torch.Tensor) -> torch.Tensor:
    m3 = torch.zeros(*matrix.shape[:-2], 3, 3, dtype=matrix.dtype, device=matrix.device)
    m3[..., :2, :2] = matrix
    m3[..., 2, 2] = 1.0
    return m3


def aniso_mag_rotation(rotation: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """RELION's ``applyAnisoMag``: ``M₃⁻¹ A`` (``(..., 3, 3)``), for a projector that inverts it."""
    m3 = _pad3(torch.as_tensor(matrix, dtype=rotation.dtype, device=rotation.device))
    return torch.linalg.solve(m3, rotation)


def projection_matrix(
    rotation: torch.Tensor,
    matrix: torch.Tensor | None = None,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Matrix ``B`` whose *transpose* maps a detector frequency to the map: ``Bᵀ (kx, ky, 0)``.

    cryograd's projectors sample the map at ``Aᵀ (kx, ky, 0)`` for a rotation ``A``. Passing
    ``B = s · M₃ᵀ A`` instead reproduces RELION's ``(s⁻¹ M₃⁻¹ A)⁻¹ = s Aᵀ M₃``.

    Parameters
    ----------
    rotation
        ``(..., 3, 3)`` RELION matrices ``A``.
    matrix
        ``(2, 2)`` or ``(..., 2, 2)`` mag matrix ``M``, or None for the identity.
    scale
        :func:`reference_grid_scale` of the particle's optics group (scalar or ``(...)``).

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)``; not orthogonal when ``M`` is not a rotation or ``scale != 1``.
    """
    out = rotation
    if matrix is not None:
        m3 = _pad3(torch.as_tensor(matrix, dtype=rotation.dtype, device=rotation.device))
        out = m3.transpose(-1, -2) @ rotation
    s = torch.as_tensor(scale, dtype=rotation.dtype, device=rotation.device)
    return out * (s[..., None, None] if s.dim() else s)


def reference_grid_scale(
    box_size: torch.Tensor | int,
    pixel_size: torch.Tensor | float,
    reference_box_size: int,
    reference_pixel_size: float,
) -> torch.Tensor:
    """Factor taking a group's integer frequency onto the reference grid: ``(N_ref p_ref)/(N p)``.

    RELION (``applyScaleDifference``) multiplies ``A`` by the inverse, ``(N p)/(N_ref p_ref)``.
    """
    n = torch.as_tensor(box_size, dtype=torch.float64)
    p = torch.as_tensor(pixel_size, dtype=torch.float64)
    return (reference_box_size * reference_pixel_size) / (n * p)
