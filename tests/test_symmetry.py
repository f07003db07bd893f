"""Tests of cryograd.symmetry: group structure, generators, symmetrisation, pose expansion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryograd.errors import CryogradError
from cryograd.geometry import axis_angle_to_matrix, euler_to_matrix
from cryograd.symmetry import (
    expand_poses,
    group_order,
    rotate_volume,
    symmetrize_volume,
    symmetry_matrices,
)

ORDERS = {"C1": 1, "C2": 2, "C7": 7, "D2": 4, "D7": 14, "T": 12, "O": 24, "I": 60}
ORDERS.update({f"I{k}": 60 for k in range(1, 5)})

# The generators as written in CONVENTIONS.md / RELION's symmetries.cpp: (fold, axis).
GENERATORS = {
    "C7": [(7, (0, 0, 1))],
    "D7": [(7, (0, 0, 1)), (2, (1, 0, 0))],
    "T": [(3, (0, 0, 1)), (2, (0, 0.816496, 0.577350))],
    "O": [(3, (0.5773502, 0.5773502, 0.5773502)), (4, (0, 0, 1))],
    "I": [(2, (0, 0, 1)), (5, (0.525731114, 0, 0.850650807)), (3, (0, 0.356822076, 0.934172364))],
    "I1": [
        (2, (1, 0, 0)),
        (5, (0.85065080702670, 0, -0.5257311142635)),
        (3, (0.9341723640, 0.3568220765, 0)),
    ],
    "I3": [
        (2, (-0.5257311143, 0, 0.8506508070)),
        (5, (0, 0, 1)),
        (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ],
    "I4": [
        (2, (0.5257311143, 0, 0.8506508070)),
        (5, (0.8944271932547096, 0, 0.4472135909903704)),
        (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ],
}


def _contains(mats: torch.Tensor, m: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool((mats - m).abs().amax(dim=(-2, -1)).min() < tol)


@pytest.mark.parametrize("group", list(ORDERS))
def test_group_order_orthonormal_and_closed(group):
    mats = symmetry_matrices(group)
    assert mats.shape == (ORDERS[group], 3, 3) and group_order(group) == ORDERS[group]
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(mats[0], eye)
    assert torch.allclose(mats @ mats.transpose(-1, -2), eye.expand_as(mats), atol=1e-12)
    assert torch.allclose(torch.linalg.det(mats), torch.ones(len(mats), dtype=torch.float64))
    # distinct elements
    diff = (mats[:, None] - mats[None]).abs().amax(dim=(-2, -1))
    assert (diff + 10 * torch.eye(len(mats), dtype=torch.float64)).min() > 1e-3
    # closure under products and inverses
    for g in mats:
        for h in mats:
            assert _contains(mats, g @ h)
        assert _contains(mats, g.T)


@pytest.mark.parametrize("group", list(GENERATORS))
def test_conventions_generators_are_in_group(group):
    mats = symmetry_matrices(group)
    for fold, axis in GENERATORS[group]:
        a = torch.tensor(axis, dtype=torch.float64)
        a = a / a.norm()
        for sense in (1, -1):
            R = axis_angle_to_matrix(sense * a * 2 * math.pi / fold)
            assert _contains(mats, R), (group, fold, axis)


@pytest.mark.parametrize(
    "group, angles",
    [
        # rotation angle (degrees) -> number of elements: the class structure of each group
        ("D7", {0: 1, 180: 7, 51: 2, 103: 2, 154: 2}),
        ("T", {0: 1, 180: 3, 120: 8}),
        ("O", {0: 1, 90: 6, 180: 9, 120: 8}),
        ("I", {0: 1, 180: 15, 120: 20, 72: 12, 144: 12}),
        ("I1", {0: 1, 180: 15, 120: 20, 72: 12, 144: 12}),
    ],
)
def test_rotation_angle_census(group, angles):
    mats = symmetry_matrices(group)
    tr = mats.diagonal(dim1=-2, dim2=-1).sum(-1).clamp(-1, 3)
    deg = torch.rad2deg(torch.acos((tr - 1) / 2)).round().long().tolist()
    counts: dict[int, int] = {}
    for d in deg:
        counts[d] = counts.get(d, 0) + 1
    assert counts == angles


def test_unknown_group():
    with pytest.raises(CryogradError, match="unknown symmetry group"):
        symmetry_matrices("X5")
    with pytest.raises(CryogradError):
        symmetry_matrices("C0")
    assert symmetry_matrices("d7").shape[0] == 14  # case-insensitive


def test_icosahedral_settings_are_rotations_of_each_other():
    """I1..I4 are the same group in other orientations: conjugate by a rotation Q of I2."""
    i2 = symmetry_matrices("I2")
    # I1 from I2: the 2-fold z of I2 becomes the 2-fold x of I1; a 90° rotation about y maps z to x
    # and keeps the 5-fold in the xz plane.
    q = axis_angle_to_matrix(torch.tensor([0.0, math.pi / 2, 0.0], dtype=torch.float64))
    conj = q @ i2 @ q.T
    i1 = symmetry_matrices("I1")
    assert all(_contains(i1, m) for m in conj)


# ------------------------------------------------------------------ volumes


def _blob_volume(n: int, centres: np.ndarray, sigma: float) -> torch.Tensor:
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.stack([x, y, z], axis=-1).astype(np.float64)
    v = np.zeros((n, n, n))
    for p in centres:
        v += np.exp(-np.sum((r - p) ** 2, axis=-1) / (2 * sigma**2))
    return torch.from_numpy(v)


def _random_centres(k: int, radius: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((k, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(3, radius, (k, 1))


def test_rotate_volume_moves_a_blob_as_defined():
    """W(r) = V(R r): a blob at p moves to Rᵀ p."""
    n = 24
    p = np.array([[5.0, -2.0, 3.0]])
    R = axis_angle_to_matrix(torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64))
    w = rotate_volume(_blob_volume(n, p, 2.0), R)
    expected = _blob_volume(n, p @ R.numpy(), 2.0)  # rows: (Rᵀ p)ᵀ = pᵀ R
    assert (w - expected).norm() / expected.norm() < 0.05  # trilinear smoothing only
    wrong = _blob_volume(n, p @ R.numpy().T, 2.0)  # R p: the other direction
    assert (w - wrong).norm() / wrong.norm() > 0.5


@pytest.mark.parametrize("group", ["D7", "I"])
def test_symmetrize_volume_matches_analytic_orbit_average_and_is_invariant(group):
    n = 32
    sigma = 2.0  # band-limited enough for trilinear interpolation
    centres = _random_centres(3, 9.0, seed=1)
    v = _blob_volume(n, centres, sigma)
    mats = symmetry_matrices(group).numpy()
    sym = symmetrize_volume(v, group)
    # V(R r) with V a sum of isotropic blobs at p_j is a sum of blobs at Rᵀ p_j
    orbit = np.concatenate([centres @ R for R in mats])
    expected = _blob_volume(n, orbit, sigma) / len(mats)
    rel = (sym - expected).norm() / expected.norm()
    assert rel < 0.02, rel
    # invariance under every operator (to interpolation accuracy)
    for R in symmetry_matrices(group):
        rot = rotate_volume(sym, R)
        assert (rot - sym).norm() / sym.norm() < 0.03
    # a non-symmetric volume is not invariant: the test can fail
    R1 = symmetry_matrices(group)[1]
    assert (rotate_volume(v, R1) - v).norm() / v.norm() > 0.5


def test_symmetrize_c1_is_identity():
    v = torch.randn(8, 8, 8, dtype=torch.float64)
    assert torch.equal(symmetrize_volume(v, "C1"), v)


# ------------------------------------------------------------------ pose expansion


def _line_integral_image(centres: np.ndarray, A: np.ndarray, n: int, sigma: float) -> np.ndarray:
    """img(x, y) = ∫ V(Aᵀ (x, y, z)) dz, evaluated numerically from the definition."""
    c = np.arange(n) - n // 2
    zs = np.linspace(-n, n, 4 * n + 1)
    y, x, z = np.meshgrid(c, c, zs, indexing="ij")
    r = np.stack([x, y, z], axis=-1)  # (n, n, nz, 3)
    s = r @ A  # rows: (Aᵀ r)ᵀ = rᵀ A
    v = np.zeros(s.shape[:-1])
    for p in centres:
        v += np.exp(-np.sum((s - p) ** 2, axis=-1) / (2 * sigma**2))
    return v.sum(axis=-1) * (zs[1] - zs[0])


@pytest.mark.parametrize("group", ["D7", "T"])
def test_expand_poses_gives_identical_line_integrals(group):
    """A symmetric point cloud projects identically at A and at every expanded pose A Rᵀ."""
    n, sigma = 24, 1.5
    mats = symmetry_matrices(group).numpy()
    seed_points = _random_centres(2, 7.0, seed=3)
    cloud = np.concatenate([seed_points @ R for R in mats])  # G-invariant set of points
    A = euler_to_matrix(torch.tensor([37.0]), torch.tensor([61.0]), torch.tensor([-23.0])).double()
    expanded = expand_poses(A, group)
    assert expanded.shape == (1, len(mats), 3, 3)
    assert torch.allclose(expanded[0, 0], A[0])
    ref = _line_integral_image(cloud, A[0].numpy(), n, sigma)
    wrong_max = 0.0
    for g, R in enumerate(mats):
        img = _line_integral_image(cloud, expanded[0, g].numpy(), n, sigma)
        # RELION's axes carry 6-10 digits (T: 0.816496), so the group is exact to ~1e-6
        np.testing.assert_allclose(img, ref, atol=1e-5 * np.abs(ref).max())
        # left multiplication R A is not a symmetry of the images (in-plane/out-of-plane change)
        bad = _line_integral_image(cloud, R @ A[0].numpy(), n, sigma)
        wrong_max = max(wrong_max, np.abs(bad - ref).max() / np.abs(ref).max())
    assert wrong_max > 0.1


def test_expand_poses_set_equals_right_multiplication_by_group():
    A = euler_to_matrix(
        torch.tensor([10.0, 80.0]), torch.tensor([20.0, 5.0]), torch.tensor([0.0, 90.0])
    )
    A = A.double()
    e = expand_poses(A, "O")
    mats = symmetry_matrices("O")
    for i in range(2):
        for R in mats:
            assert _contains(e[i], A[i] @ R)  # {A Rᵀ} = {A R} as sets
    assert e.reshape(-1, 3, 3).shape == (48, 3, 3)


def test_expand_poses_with_forward_model():
    """Projections of a D7-symmetrised map by cryograd's ForwardModel agree at A and A Rᵀ."""
    forward = pytest.importorskip("cryograd.forward")
    n = 32
    centres = _random_centres(3, 9.0, seed=5)
    mats = symmetry_matrices("D7").numpy()
    vol = _blob_volume(n, np.concatenate([centres @ R for R in mats]), 2.0)
    A = euler_to_matrix(torch.tensor([12.0]), torch.tensor([70.0]), torch.tensor([33.0])).double()
    poses = expand_poses(A, "D7")[0]
    model = forward.ForwardModel(n, 1.0, projector="real")
    imgs = model.project(vol, poses)
    ref = imgs[0]
    scale = ref.abs().max()
    worst = max(float((imgs[g] - ref).abs().max() / scale) for g in range(len(poses)))
    wrong = model.project(vol, torch.from_numpy(mats) @ A)
    wrong_best = max(float((wrong[g] - ref).abs().max() / scale) for g in range(1, len(mats)))
    assert worst < 0.05 and wrong_best > 0.2, (worst, wrong_best)
