"""Tests of the voxel-driven real-space projector pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryograd.geometry import euler_to_matrix
from cryograd.projectors import real_space as rs


def _random_rotations(b: int, gen: torch.Generator) -> torch.Tensor:
    ang = torch.rand(b, 3, generator=gen, dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0])
    return euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])


@pytest.mark.parametrize("n", [12, 13, 16, 17])
def test_dot_product(n, rng):
    rot = _random_rotations(5, rng)
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    y = torch.randn(5, n, n, generator=rng, dtype=torch.float64)
    ax = rs.project(x, rot, batch_size=2)
    aty = rs.backproject(y, rot, batch_size=3)
    err = abs(float((ax * y).sum() - (x * aty).sum())) / float(ax.norm() * y.norm())
    assert err < 1e-9


@pytest.mark.parametrize("n", [12, 13])
def test_identity_is_sum_along_z(n, rng):
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    img = rs.project(x, torch.eye(3, dtype=torch.float64)[None])
    np.testing.assert_allclose(img[0].numpy(), x.sum(0).numpy(), atol=1e-12)


@pytest.mark.parametrize("n", [12, 13])
def test_quarter_turn_is_rot90(n, rng):
    """A = Rz(psi=90°): image(x, y) = ∫ V(Aᵀ(x, y, z)) dz, so img[y, x] = sum_z V[z, x', y']
    rotated."""
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    rot = euler_to_matrix(*torch.tensor([0.0, 0.0, 90.0], dtype=torch.float64))[None]
    img = rs.project(x, rot)[0].numpy()
    proj = x.sum(0).numpy()  # [y, x]
    # Independent reference: evaluate img(px, py) = proj at (x, y) = Aᵀ (px, py) voxel coordinates.
    a = rot[0].numpy()
    c = n // 2
    ref = np.zeros((n, n))
    for iy in range(n):
        for ix in range(n):
            r = a.T @ np.array([ix - c, iy - c, 0.0])
            jx, jy = int(round(r[0])) + c, int(round(r[1])) + c
            if 0 <= jx < n and 0 <= jy < n:
                ref[iy, ix] = proj[jy, jx]
    np.testing.assert_allclose(img, ref, atol=1e-9)


def test_single_voxel_bilinear_weights():
    """One voxel spreads over 4 pixels with bilinear weights, computed here by hand."""
    n = 15
    x = torch.zeros(n, n, n, dtype=torch.float64)
    i, j, k = 9, 4, 11  # z, y, x
    x[i, j, k] = 2.0
    rot = euler_to_matrix(*torch.tensor([30.0, 50.0, -20.0], dtype=torch.float64))
    img = rs.project(x, rot[None])[0].numpy()
    r = np.array([k, j, i], dtype=float) - n // 2
    p = rot.numpy()[:2] @ r + n // 2
    x0, y0 = math.floor(p[0]), math.floor(p[1])
    fx, fy = p[0] - x0, p[1] - y0
    ref = np.zeros((n, n))
    ref[y0, x0] = 2 * (1 - fx) * (1 - fy)
    ref[y0, x0 + 1] = 2 * fx * (1 - fy)
    ref[y0 + 1, x0] = 2 * (1 - fx) * fy
    ref[y0 + 1, x0 + 1] = 2 * fx * fy
    np.testing.assert_allclose(img, ref, atol=1e-12)


def test_voxels_outside_image_are_dropped():
    """A corner voxel rotated out of the box contributes nothing (and the transpose agrees)."""
    n = 12
    x = torch.zeros(n, n, n, dtype=torch.float64)
    x[0, 0, 0] = 1.0
    rot = euler_to_matrix(*torch.tensor([0.0, 0.0, 45.0], dtype=torch.float64))[None]
    p = rot[0, :2] @ torch.tensor([-6.0, -6.0, -6.0], dtype=torch.float64) + n // 2
    assert float(p.min()) < -1 or float(p.max()) > n
    assert float(rs.project(x, rot).abs().sum()) == 0.0


def test_chunking_and_float32(rng):
    n = 16
    rot = _random_rotations(7, rng)
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    full = rs.project(x, rot, batch_size=7)
    chunked = rs.project(x, rot, batch_size=2)
    np.testing.assert_allclose(full.numpy(), chunked.numpy(), atol=1e-12)
    single = rs.project(x.float(), rot.float())
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.double().numpy(), full.numpy(), atol=1e-3)


def test_device(device, rng):
    n = 12
    rot = _random_rotations(3, rng).to(device)
    x = torch.randn(n, n, n, generator=rng).to(device)
    img = rs.project(x, rot)
    assert img.device.type == device.type
    assert rs.backproject(img, rot).shape == (n, n, n)
