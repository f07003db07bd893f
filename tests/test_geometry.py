"""Euler angles, rotation matrices and axis-angle vectors against scipy and RELION's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryograd.geometry import (
    axis_angle_to_matrix,
    cryosparc_pose_to_matrix,
    euler_to_matrix,
    matrix_to_axis_angle,
    matrix_to_cryosparc_pose,
    matrix_to_euler,
)


def _random_angles(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)], axis=1
    )


def test_euler_matches_scipy_zyz_transposed() -> None:
    angles = _random_angles(10_000)
    A = euler_to_matrix(*torch.from_numpy(angles).unbind(-1)).numpy()
    reference = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(A, reference, atol=1e-12)


def test_euler_matches_relion_formula_written_out() -> None:
    rot, tilt, psi = 30.0, 50.0, -70.0
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    expected = np.array(
        [
            [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
            [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
            [sb * ca, sb * sa, cb],
        ]
    )
    A = euler_to_matrix(torch.tensor(rot), torch.tensor(tilt), torch.tensor(psi)).numpy()
    np.testing.assert_allclose(A, expected, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_euler_round_trip(dtype: torch.dtype) -> None:
    angles = torch.from_numpy(_random_angles(10_000, seed=1)).to(dtype)
    A = euler_to_matrix(*angles.unbind(-1))
    back = matrix_to_euler(A)
    A2 = euler_to_matrix(*back.unbind(-1))
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert torch.max(torch.abs(A - A2)) < tol
    assert torch.all(back[:, 1] >= 0) and torch.all(back[:, 1] <= 180)


@pytest.mark.parametrize("tilt", [0.0, 180.0, 1e-9, 180.0 - 1e-9])
def test_euler_round_trip_gimbal_lock(tilt: float) -> None:
    rng = np.random.default_rng(2)
    rot = torch.from_numpy(rng.uniform(-180, 180, 200))
    psi = torch.from_numpy(rng.uniform(-180, 180, 200))
    A = euler_to_matrix(rot, torch.full_like(rot, tilt), psi)
    back = matrix_to_euler(A)
    A2 = euler_to_matrix(*back.unbind(-1))
    assert torch.max(torch.abs(A - A2)) < 1e-7


def test_axis_angle_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    rotvec = rng.normal(size=(5000, 3))
    rotvec[:10] *= 1e-9  # near identity
    R = axis_angle_to_matrix(torch.from_numpy(rotvec)).numpy()
    np.testing.assert_allclose(R, Rotation.from_rotvec(rotvec).as_matrix(), atol=1e-12)
    A = cryosparc_pose_to_matrix(torch.from_numpy(rotvec)).numpy()
    np.testing.assert_allclose(
        A, Rotation.from_rotvec(rotvec).as_matrix().transpose(0, 2, 1), atol=1e-12
    )


def test_axis_angle_round_trip_including_pi() -> None:
    rng = np.random.default_rng(4)
    axes = rng.normal(size=(1000, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0, np.pi, 1000)
    angles[:50] = np.pi
    angles[50:100] = np.pi - 1e-5
    rotvec = torch.from_numpy(axes * angles[:, None])
    R = axis_angle_to_matrix(rotvec)
    R2 = axis_angle_to_matrix(matrix_to_axis_angle(R))
    assert torch.max(torch.abs(R - R2)) < 1e-6
    A = cryosparc_pose_to_matrix(rotvec)
    A2 = cryosparc_pose_to_matrix(matrix_to_cryosparc_pose(A))
    assert torch.max(torch.abs(A - A2)) < 1e-6


def test_matrices_are_rotations(device: torch.device) -> None:
    angles = torch.from_numpy(_random_angles(100, seed=5)).to(device)
    A = euler_to_matrix(*angles.unbind(-1))
    eye = torch.eye(3, dtype=A.dtype, device=device)
    assert torch.allclose(A @ A.transpose(-1, -2), eye.expand_as(A), atol=1e-12)
    assert torch.allclose(torch.linalg.det(A), torch.ones(100, dtype=A.dtype, device=device))
