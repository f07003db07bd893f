"""RELION's CTF against the published formula evaluated independently with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryograd.ctf import CTFParams, ctf_2d, electron_wavelength_angstrom


def _numpy_relion_ctf(
    sx, sy, dfu, dfv, dfang_deg, kv, cs_mm, q0, phase_deg=0.0, bfac=0.0, scale=1.0
):
    """RELION's formula (CTF::getCTF) written out with numpy, one particle."""
    volts = kv * 1e3
    lam = 12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6))
    cs = cs_mm * 1e7
    u2 = sx**2 + sy**2
    ang = np.arctan2(sy, sx)
    deltaf = 0.5 * (dfu + dfv) + 0.5 * (dfu - dfv) * np.cos(2 * (ang - np.deg2rad(dfang_deg)))
    k1 = np.pi / 2 * 2 * lam  # = pi * lambda
    k2 = np.pi / 2 * cs * lam**3
    k3 = np.arctan(q0 / np.sqrt(1 - q0**2))
    k4 = -bfac / 4.0
    k5 = np.deg2rad(phase_deg)
    argument = k1 * deltaf * u2 - k2 * u2 * u2 + k5 + k3  # RELION's sign convention: -gamma
    return -np.sin(-argument) * np.exp(k4 * u2) * scale


def test_wavelength_300kv() -> None:
    assert float(electron_wavelength_angstrom(300.0)) == pytest.approx(0.019687, abs=2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ctf_matches_numpy_table(dtype: torch.dtype) -> None:
    box, apix = 48, 1.3
    params = CTFParams.create(
        defocus_u_angstrom=[15000.0, 22000.0, 9000.0],
        defocus_v_angstrom=[14000.0, 21000.0, 9500.0],
        defocus_angle_degrees=[30.0, -45.0, 110.0],
        voltage_kv=[300.0, 200.0, 300.0],
        spherical_aberration_mm=[2.7, 2.0, 0.01],
        amplitude_contrast=[0.1, 0.07, 0.1],
        phase_shift_degrees=[0.0, 0.0, 90.0],
        b_factor=[0.0, 50.0, 0.0],
        scale=[1.0, 0.8, 1.0],
    )
    ctf = ctf_2d(params, box, apix, rfft=True, dtype=dtype).double().numpy()
    assert ctf.shape == (3, box, box // 2 + 1)
    ky = np.fft.fftfreq(box) * box
    kx = np.fft.rfftfreq(box) * box
    gy, gx = np.meshgrid(ky, kx, indexing="ij")
    sx, sy = gx / (box * apix), gy / (box * apix)
    for i in range(3):
        expected = _numpy_relion_ctf(
            sx,
            sy,
            *[
                float(getattr(params, f)[i])
                for f in (
                    "defocus_u_angstrom",
                    "defocus_v_angstrom",
                    "defocus_angle_degrees",
                    "voltage_kv",
                    "spherical_aberration_mm",
                    "amplitude_contrast",
                    "phase_shift_degrees",
                    "b_factor",
                    "scale",
                )
            ],
        )
        tol = 1e-10 if dtype == torch.float64 else 2e-4
        np.testing.assert_allclose(ctf[i], expected, atol=tol)


def test_full_grid_agrees_with_half_grid() -> None:
    box = 33
    params = CTFParams.create(12000.0, 11000.0, 20.0)
    full = ctf_2d(params, box, 1.0, rfft=False, dtype=torch.float64)
    half = ctf_2d(params, box, 1.0, rfft=True, dtype=torch.float64)
    assert torch.allclose(full[..., : box // 2 + 1], half)
    # The CTF is even: C(-k) = C(k).
    flipped = torch.roll(torch.flip(full, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    assert torch.allclose(full, flipped, atol=1e-12)


def test_zeros_without_cs_and_amplitude_contrast() -> None:
    """With Cs = 0, Q0 = 0 and no astigmatism, zeros fall at |s|^2 = n / (lambda * defocus)."""
    defocus = 20000.0
    params = CTFParams.create(defocus, defocus, 0.0, 300.0, 0.0, 0.0)
    lam = float(electron_wavelength_angstrom(300.0))
    from cryograd.ctf import ctf_from_frequencies

    for n in range(1, 6):
        s = math.sqrt(n / (lam * defocus))
        at_zero = ctf_from_frequencies(
            params, torch.tensor([s], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
        )
        assert abs(float(at_zero[0, 0])) < 1e-9
        # and the CTF changes sign across it
        before = ctf_from_frequencies(params, torch.tensor([s * 0.999]), torch.tensor([0.0]))
        after = ctf_from_frequencies(params, torch.tensor([s * 1.001]), torch.tensor([0.0]))
        assert float(before) * float(after) < 0


def test_sign_at_low_frequency_is_positive() -> None:
    params = CTFParams.create(15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1)
    ctf = ctf_2d(params, 64, 1.0, dtype=torch.float64)
    assert float(ctf[0, 0, 0]) == pytest.approx(0.1, abs=1e-12)  # +Q0 at k = 0
    assert float(ctf[0, 0, 1]) > 0


def test_astigmatism_rotates_with_defocus_angle() -> None:
    box, apix = 64, 1.0
    base = CTFParams.create(20000.0, 10000.0, 0.0)
    rotated = CTFParams.create(20000.0, 10000.0, 90.0)
    a = ctf_2d(base, box, apix, rfft=False, dtype=torch.float64)[0]
    b = ctf_2d(rotated, box, apix, rfft=False, dtype=torch.float64)[0]
    # Rotating the astigmatism by 90 degrees equals swapping kx and ky.
    assert torch.allclose(a, b.transpose(0, 1), atol=1e-12)
    assert not torch.allclose(a, b, atol=1e-3)
    # Defocus U lies along the defocus angle: along kx (angle 0) the first zero comes earlier.
    lam = float(electron_wavelength_angstrom(300.0))
    s_zero_u = math.sqrt(1 / (lam * 20000.0))
    from cryograd.ctf import ctf_from_frequencies

    cs0 = CTFParams.create(20000.0, 10000.0, 0.0, 300.0, 0.0, 0.0)
    s_u = torch.tensor([s_zero_u], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    along_u = ctf_from_frequencies(cs0, s_u, zero)
    along_v = ctf_from_frequencies(cs0, zero, s_u)
    assert abs(float(along_u)) < 1e-9 and abs(float(along_v)) > 0.1


def test_batch_on_device(device: torch.device) -> None:
    params = CTFParams.create([10000.0, 20000.0], device=device)
    out = ctf_2d(params, 16, 2.0)
    assert out.device.type == device.type and out.shape == (2, 16, 9)
