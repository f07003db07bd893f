"""The separable distance transform and the separable Gaussian window against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryograd.fourier import gaussian_blur
from cryograd.postprocess.masks import squared_distance_to_set
from cryograd.validation import _distance_to_set


def _brute_squared_distance(binary: np.ndarray, periodic: bool) -> np.ndarray:
    """min over the set's voxels of the squared distance (periodic: the shortest wrap)."""
    shape = np.array(binary.shape)
    points = np.argwhere(binary)
    grid = np.indices(binary.shape).reshape(3, -1).T
    diff = np.abs(grid[:, None, :] - points[None, :, :])
    if periodic:
        diff = np.minimum(diff, shape - diff)
    return (diff**2).sum(-1).min(1).reshape(binary.shape)


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("max_distance", [2.5, 5, 12])  # 12: the int32 path
def test_squared_distance_equals_brute_force(periodic, max_distance) -> None:
    rng = np.random.default_rng(3)
    binary = rng.random((13, 14, 16)) > 0.99
    binary[0, 13, 15] = True  # a voxel at the faces: wraps when periodic
    got = squared_distance_to_set(torch.from_numpy(binary), max_distance, periodic=periodic)
    want = _brute_squared_distance(binary, periodic)
    near = want <= max_distance**2
    np.testing.assert_array_equal(got.numpy()[near], want[near])
    assert (got.numpy()[~near] > max_distance**2).all()


def test_periodic_distance_refuses_offsets_beyond_the_array() -> None:
    with pytest.raises(ValueError, match="periodic axis"):
        squared_distance_to_set(torch.ones((4, 20, 20), dtype=torch.bool), 5, periodic=True)


def test_mask_distance_is_the_whole_pixel_ceiling_periodic() -> None:
    """``_distance_to_set``: the smallest whole ``r`` with the voxel in the ball-``r`` dilation,
    periodic over the array (as the DFT dilation it replaced), ``max_r + 1`` beyond."""
    rng = np.random.default_rng(4)
    binary = rng.random((12, 11, 10)) > 0.99
    binary[11, 0, 5] = True
    got = _distance_to_set(torch.from_numpy(binary.astype(np.float64)), 4).numpy()
    d2 = _brute_squared_distance(binary, periodic=True)
    want = np.where(d2 <= 16, np.ceil(np.sqrt(d2)), 5.0)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_blur_equals_the_spectral_formula(dtype) -> None:
    """The spectrum times ``exp(−2π² σ² |k|²)`` (``k`` in cycles per voxel), by NumPy."""
    rng = np.random.default_rng(5)
    v = rng.standard_normal((12, 10, 9))
    sigma = 1.7
    k = [np.fft.fftfreq(12), np.fft.fftfreq(10), np.fft.rfftfreq(9)]
    k2 = k[0][:, None, None] ** 2 + k[1][None, :, None] ** 2 + k[2][None, None, :] ** 2
    want = np.fft.irfftn(
        np.fft.rfftn(v) * np.exp(-2 * np.pi**2 * sigma**2 * k2), s=v.shape, axes=(0, 1, 2)
    )
    got = gaussian_blur(torch.from_numpy(v).to(dtype), sigma).double().numpy()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(got, want, atol=tol * np.abs(v).max())
