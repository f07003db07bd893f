"""Tests of the Fourier-slice projector pair, its pieces and the gridding correction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryograd.geometry import euler_to_matrix
from cryograd.projectors import fourier_slice as fs


def _random_rotations(b: int, gen: torch.Generator) -> torch.Tensor:
    ang = torch.rand(b, 3, generator=gen, dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0])
    return euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])


def _rel(a: float, b: float, scale: float) -> float:
    return abs(a - b) / scale


def _inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """Real inner product ``Re Σ conj(a) b`` (works for real and complex)."""
    return float((torch.conj(a) * b).real.sum()) if a.is_complex() else float((a * b).sum())


@pytest.mark.parametrize("n", [12, 13, 16, 17])
@pytest.mark.parametrize("gridding", [True, False])
def test_dot_product_pair(n, gridding, rng):
    rot = _random_rotations(5, rng)
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    y = torch.randn(5, n, n, generator=rng, dtype=torch.float64)
    ax = fs.project(x, rot, gridding=gridding, batch_size=2)
    aty = fs.backproject(y, rot, gridding=gridding, batch_size=3)
    assert _rel(_inner(ax, y), _inner(x, aty), float(ax.norm() * y.norm())) < 1e-9


@pytest.mark.parametrize("pad", [1.0, 1.5, 3.0])
def test_dot_product_other_padding(pad, rng):
    n = 13
    rot = _random_rotations(4, rng)
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    y = torch.randn(4, n, n, generator=rng, dtype=torch.float64)
    ax = fs.project(x, rot, pad=pad)
    aty = fs.backproject(y, rot, pad=pad)
    assert _rel(_inner(ax, y), _inner(x, aty), float(ax.norm() * y.norm())) < 1e-9


@pytest.mark.parametrize("n", [12, 13])
def test_dot_product_pieces(n, rng):
    """Each factor of the pair separately: 3D transform, slice extraction, 2D inverse transform."""
    p = fs.padded_size(n, 2.0)
    rot = _random_rotations(3, rng)
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    g3 = torch.randn(p, p, p // 2 + 1, generator=rng, dtype=torch.complex128)
    fx = fs.volume_spectrum(x, p)
    fty = fs.volume_spectrum_adjoint(g3, n)
    assert _rel(_inner(fx, g3), _inner(x, fty), float(fx.norm() * g3.norm())) < 1e-9

    geom = fs.slice_geometry(rot, n, p)
    s2 = torch.randn(3, n, n // 2 + 1, generator=rng, dtype=torch.complex128)
    sx = fs.extract_slices(g3, geom)
    sty = fs.insert_slices(s2, geom)
    assert _rel(_inner(sx, s2), _inner(g3, sty), float(sx.norm() * s2.norm())) < 1e-9

    img = torch.randn(3, n, n, generator=rng, dtype=torch.float64)
    gy = fs.spectra_to_images(s2, n)
    gti = fs.images_to_spectra_adjoint(img)
    assert _rel(_inner(gy, img), _inner(s2, gti), float(gy.norm() * img.norm())) < 1e-9


@pytest.mark.parametrize("n", [12, 13])
def test_gridding_operator(n, rng):
    p = fs.padded_size(n, 2.0)
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    y = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    gx, gy = fs.gridding_correction(x, p), fs.gridding_correction(y, p)
    assert _rel(_inner(gx, y), _inner(x, gy), float(gx.norm() * y.norm())) < 1e-9
    # Against numpy's sinc: 1 / Π sinc²(coordinate / P).
    c = np.arange(n) - n // 2
    w = 1.0 / np.sinc(c / p) ** 2
    ref = w[:, None, None] * w[None, :, None] * w[None, None, :]
    got = fs.gridding_weights(n, p, dtype=torch.float64).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12)


_AXIS_VIEWS = [
    np.eye(3),
    np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),  # -90° about x: ky = -D/2 lands on qz = -P/2
    np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]),
]


@pytest.mark.parametrize("kernels", ["torch", "auto"])
@pytest.mark.parametrize(("dtype", "excess"), [(torch.float64, 4e-16), (torch.float32, 2e-7)])
def test_samples_rounded_past_nyquist_stay_on_grid(kernels, dtype, excess, monkeypatch, rng):
    """Axis-aligned views whose rows have norm 1 + a few ulp (as rotations read from files do)
    put Nyquist samples a hair outside ``|q| <= P/2``: no access may leave the grid, and the
    result equals that of the exact rotation."""
    monkeypatch.setenv("CRYOGRAD_KERNELS", kernels)
    n = 16
    p = fs.padded_size(n, 2.0)
    exact = torch.tensor(np.stack(_AXIS_VIEWS), dtype=dtype)
    rounded = exact * (1 + excess)
    geom = fs.slice_geometry(rounded, n, p)
    size = fs.ExtendedSpectrum.zeros(p).numel()
    assert int(geom.base.min()) >= 0 and int(geom.base.max()) + max(geom.corner_offsets()) < size
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64).to(dtype)
    y = torch.randn(len(exact), n, n, generator=rng, dtype=torch.float64).to(dtype)
    ax = fs.project(x, rounded)
    ref = fs.project(x, exact)
    assert float((ax - ref).norm() / ref.norm()) < 1e-5
    aty = fs.backproject(y, rounded)
    assert torch.isfinite(aty).all()
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert _rel(_inner(ax, y), _inner(x, aty), float(ax.norm() * y.norm())) < tol


def test_padded_size():
    assert fs.padded_size(64, 2.0) == 128
    assert fs.padded_size(65, 2.0) == 130
    assert fs.padded_size(13, 1.0) == 14
    assert fs.padded_size(13, 1.5) % 2 == 0


def _smooth_volume(n: int, gen: torch.Generator) -> torch.Tensor:
    """Sum of Gaussian blobs (sigma 1.5 voxels) inside the inscribed sphere."""
    c = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(n, n, n, dtype=torch.float64)
    for _ in range(12):
        centre = (torch.rand(3, generator=gen, dtype=torch.float64) - 0.5) * (n / 2)
        vol += torch.exp(
            -((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / (2 * 1.5**2)
        )
    return vol


@pytest.mark.parametrize("n", [24, 25])
@pytest.mark.parametrize(("pad", "tol"), [(2.0, 0.035), (8.0, 0.004)])
def test_line_integral_against_analytic_blobs(n, pad, tol, rng):
    """Projections of Gaussian blobs equal the analytic line integrals (2D Gaussians).

    Trilinear interpolation at pad 2 leaves about 2.5 % error (RELION's choice too); the error
    shrinks with the padding (pad 8: 0.2 %), which pins down geometry and normalisation.
    """
    sigma = 1.5
    centres = (torch.rand(6, 3, generator=rng, dtype=torch.float64) - 0.5) * (n / 2)
    c = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = sum(
        torch.exp(-((x - q[0]) ** 2 + (y - q[1]) ** 2 + (z - q[2]) ** 2) / (2 * sigma**2))
        for q in centres
    )
    rot = _random_rotations(4, rng)
    img = fs.project(vol, rot, pad=pad)
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    for b in range(4):
        ref = torch.zeros(n, n, dtype=torch.float64)
        for q in centres:
            pq = rot[b] @ q  # where the blob centre lands: (A r)[:2]
            ref += (
                (2 * np.pi) ** 0.5
                * sigma
                * torch.exp(-((gx - pq[0]) ** 2 + (gy - pq[1]) ** 2) / (2 * sigma**2))
            )
        err = float((img[b] - ref).norm() / ref.norm())
        assert err < tol, err


def test_identity_and_realness(rng):
    n = 16
    vol = _smooth_volume(n, rng)
    # On grid points the interpolation is exact, so without the gridding correction the identity
    # projection is the plain sum along z (up to the Nyquist-circle cut, negligible for blobs).
    img = fs.project(vol, torch.eye(3, dtype=torch.float64)[None], gridding=False)
    ref = vol.sum(0)
    assert float((img[0] - ref).norm() / ref.norm()) < 2e-3
    # Slices of a real volume are Hermitian on the kx = 0 column.
    p = fs.padded_size(n, 2.0)
    geom = fs.slice_geometry(_random_rotations(2, rng), n, p)
    sl = fs.extract_slices(fs.volume_spectrum(vol, p), geom)
    col = sl[..., 0]
    mirrored = torch.roll(torch.flip(col, (-1,)), 1, -1)
    inside = torch.fft.fftfreq(n, 1.0 / n).abs() < n // 2
    np.testing.assert_allclose(
        col[:, inside].numpy(),
        mirrored.conj()[:, inside].numpy(),
        atol=1e-9 * float(col.abs().max()),
    )


def test_chunking_and_float32(rng):
    n = 16
    rot = _random_rotations(7, rng)
    x = _smooth_volume(n, rng)
    full = fs.project(x, rot, batch_size=7)
    np.testing.assert_allclose(fs.project(x, rot, batch_size=3).numpy(), full.numpy(), atol=1e-10)
    single = fs.project(x.float(), rot.float())
    assert single.dtype == torch.float32
    assert float((single.double() - full).norm() / full.norm()) < 1e-5


def test_device(device, rng):
    n = 12
    rot = _random_rotations(3, rng).to(device)
    x = torch.randn(n, n, n, generator=rng).to(device)
    img = fs.project(x, rot)
    assert img.device.type == device.type
    assert fs.backproject(img, rot).shape == (n, n, n)
