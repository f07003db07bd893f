"""Orientations: RELION's ZYZ Euler angles, rotation matrices and axis-angle vectors.

Convention (see the README and ``../shared/CONVENTIONS.md``): with ``rot``, ``tilt``, ``psi``
in degrees, RELION's matrix is ``A = Rz(psi) · Ry(tilt) · Rz(rot)`` in its passive form. The 2D
Fourier sample ``(kx, ky)`` of a particle lies at the 3D frequency ``Aᵀ (kx, ky, 0)`` of the map,
and the image is ``img(x, y) = ∫ V(Aᵀ (x, y, z)) dz``. scipy's
``Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix()`` equals ``Aᵀ``.
cryoSPARC's axis-angle pose ``p`` gives ``A = R(p)ᵀ``.

All functions are batched over leading dimensions, run on any torch device and keep the dtype given
(use float64 for round trips at gimbal lock).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "cryosparc_pose_to_matrix",
    "matrix_to_cryosparc_pose",
]


def euler_to_matrix(
    rot_degrees: torch.Tensor, tilt_degrees: torch.Tensor, psi_degrees: torch.Tensor
) -> torch.Tensor:
    """RELION's rotation matrix ``A`` from Euler angles.

    Parameters
    ----------
    rot_degrees, tilt_degrees, psi_degrees
        ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi`` in degrees, broadcastable, ``(...)``.

    Returns
    -------
    torch.Tensor
        ``A`` with shape ``(..., 3, 3)``, the dtype of the inputs (float32 or float64).
    """
    rot_degrees, tilt_degrees, psi_degrees = torch.broadcast_tensors(
        torch.as_tensor(rot_degrees), torch.as_tensor(tilt_degrees), torch.as_tensor(psi_degrees)
    )
    if not rot_degrees.is_floating_point():
        rot_degrees = rot_degrees.double()
        tilt_degrees = tilt_degrees.to(rot_degrees.dtype)
        psi_degrees = psi_degrees.to(rot_degrees.dtype)
    a = torch.deg2rad(rot_degrees)
    b = torch.deg2rad(tilt_degrees)
    g = torch.deg2rad(psi_degrees)
    ca, sa = torch.cos(a), torch.sin(a)
    cb, sb = torch.cos(b), torch.sin(b)
    cg, sg = torch.cos(g), torch.sin(g)
    cgcb, sgcb = cg * cb, sg * cb
    out = torch.empty(a.shape + (3, 3), dtype=a.dtype, device=a.device)  # filled in place
    torch.sub(cgcb * ca, sg * sa, out=out[..., 0, 0])
    torch.add(cgcb * sa, sg * ca, out=out[..., 0, 1])
    torch.mul(-cg, sb, out=out[..., 0, 2])
    torch.sub(-(sgcb * ca), cg * sa, out=out[..., 1, 0])
    torch.add(-(sgcb * sa), cg * ca, out=out[..., 1, 1])
    torch.mul(sg, sb, out=out[..., 1, 2])
    torch.mul(sb, ca, out=out[..., 2, 0])
    torch.mul(sb, sa, out=out[..., 2, 1])
    out[..., 2, 2] = cb
    return out


def matrix_to_euler(matrix: torch.Tensor) -> torch.Tensor:
    """Euler angles ``(rot, tilt, psi)`` in degrees from RELION's matrix ``A``.

    Follows RELION's ``Euler_matrix2angles``: ``tilt`` in ``[0, 180]``; at gimbal lock
    (``sin(tilt) ≈ 0``) ``rot`` is set to 0 and the whole in-plane angle goes to ``psi``.

    Parameters
    ----------
    matrix
        ``A`` with shape ``(..., 3, 3)``.

    Returns
    -------
    torch.Tensor
        ``(..., 3)``: ``rot, tilt, psi`` in degrees, in ``(-180, 180]`` (tilt in ``[0, 180]``).
    """
    A = torch.as_tensor(matrix)
    abs_sb = torch.sqrt(A[..., 0, 2] ** 2 + A[..., 1, 2] ** 2)
    regular = abs_sb > 16 * torch.finfo(torch.float32).eps
    # Regular case: choose sin(tilt) > 0, so tilt lies in (0, pi).
    alpha_r = torch.atan2(A[..., 2, 1], A[..., 2, 0])
    beta_r = torch.atan2(abs_sb, A[..., 2, 2])
    gamma_r = torch.atan2(A[..., 1, 2], -A[..., 0, 2])
    # Gimbal lock (tilt 0 or 180): rot = 0 and the in-plane angle goes to psi, as RELION does.
    up = A[..., 2, 2] > 0
    zero = torch.zeros_like(abs_sb)
    beta_g = torch.where(up, zero, torch.full_like(abs_sb, math.pi))
    gamma_g = torch.where(
        up, torch.atan2(-A[..., 1, 0], A[..., 0, 0]), torch.atan2(A[..., 1, 0], -A[..., 0, 0])
    )
    alpha = torch.where(regular, alpha_r, zero)
    beta = torch.where(regular, beta_r, beta_g)
    gamma = torch.where(regular, gamma_r, gamma_g)
    return torch.rad2deg(torch.stack([alpha, beta, gamma], dim=-1))


def _skew(v: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(v[..., 0])
    return torch.stack(
        [
            torch.stack([zero, -v[..., 2], v[..., 1]], dim=-1),
            torch.stack([v[..., 2], zero, -v[..., 0]], dim=-1),
            torch.stack([-v[..., 1], v[..., 0], zero], dim=-1),
        ],
        dim=-2,
    )


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Active rotation matrix ``R`` of an axis-angle (Rodrigues) vector.

    Equals scipy's ``Rotation.from_rotvec(rotvec).as_matrix()``.

    Parameters
    ----------
    rotvec
        ``(..., 3)``, direction the axis, length the angle in radians.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)``.
    """
    v = torch.as_tensor(rotvec)
    if not v.is_floating_point():
        v = v.double()
    theta = torch.linalg.vector_norm(v, dim=-1)
    small = theta < 1e-6
    safe = torch.where(small, torch.ones_like(theta), theta)
    # sin(t)/t and (1-cos t)/t^2 with Taylor series near zero.
    a = torch.where(small, 1 - theta**2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta**2 / 24, (1 - torch.cos(safe)) / safe**2)
    K = _skew(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(K.shape)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Axis-angle vector of an active rotation matrix (inverse of :func:`axis_angle_to_matrix`).

    Parameters
    ----------
    matrix
        ``(..., 3, 3)`` rotation matrices.

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` with angle in ``[0, π]``.
    """
    R = torch.as_tensor(matrix)
    cos_t = ((R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1) / 2).clamp(-1.0, 1.0)
    theta = torch.acos(cos_t)
    w = torch.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]],
        dim=-1,
    )
    sin_t = torch.sin(theta)
    small = theta < 1e-6
    near_pi = theta > math.pi - 1e-3
    safe_sin = torch.where(small | near_pi, torch.ones_like(sin_t), sin_t)
    regular = w * (theta / (2 * safe_sin))[..., None]
    regular = torch.where(small[..., None], w / 2, regular)
    # Near pi: axis from the symmetric part, (R + Rᵀ)/2 = cos(t) I + (1 - cos(t)) n nᵀ.
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    B = ((R + R.transpose(-1, -2)) / 2 - cos_t[..., None, None] * eye) / (1 - cos_t).clamp_min(
        1e-12
    )[..., None, None]
    diag = torch.diagonal(B, dim1=-2, dim2=-1).clamp_min(0)
    k = torch.argmax(diag, dim=-1)
    col = torch.gather(B, -1, k[..., None, None].expand(*B.shape[:-1], 1)).squeeze(-1)
    n = col / torch.sqrt(torch.gather(diag, -1, k[..., None])).clamp_min(1e-12)
    # Fix the sign of n with the antisymmetric part when it is informative.
    sgn = torch.sign((n * w).sum(-1))
    sgn = torch.where(sgn == 0, torch.ones_like(sgn), sgn)
    pi_case = n * (sgn * theta)[..., None]
    return torch.where(near_pi[..., None], pi_case, regular)


def cryosparc_pose_to_matrix(pose: torch.Tensor) -> torch.Tensor:
    """RELION's ``A`` from cryoSPARC's ``alignments3D/pose`` (axis-angle, radians): ``R(pose)ᵀ``."""
    return axis_angle_to_matrix(pose).transpose(-1, -2)


def matrix_to_cryosparc_pose(matrix: torch.Tensor) -> torch.Tensor:
    """cryoSPARC's axis-angle pose from RELION's ``A`` (inverse of ``cryosparc_pose_to_matrix``)."""
    return matrix_to_axis_angle(torch.as_tensor(matrix).transpose(-1, -2))
