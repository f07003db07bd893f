"""RELION's optics formulas (cryograd.optics) against the C++ they come from, written a second way.

References are RELION's ``src/jaz/math/Zernike.cpp`` (``Z``, ``R``, ``oddIndexToMN``,
``evenIndexToMN``), ``src/jaz/ctf/tilt_helper.cpp`` (``insertTilt``), ``src/jaz/obs_model.cpp``
(``getPhaseCorrection``, ``getGammaOffset``, ``applyAnisoMag``), ``src/projector.cpp`` (the
projector samples the map at ``A⁻¹ (x, y, 0)``), ``src/backprojector.cpp`` (Ewald offset) and
``src/ctf.cpp`` / ``src/ctf.h`` (``getCTFP``, ``applyWeightEwaldSphereCurvature_noAniso``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryograd.errors import CryogradError
from cryograd.optics import (
    GroupAberrations,
    aberration_factor,
    aniso_mag_rotation,
    beam_tilt_phase,
    check_mag_matrix,
    ctf_p,
    ctfp_sector_image,
    even_aberration_phase,
    even_index_to_mn,
    ewald_offset,
    ewald_radius_pixels,
    ewald_weight,
    extract_beam_tilt,
    insert_beam_tilt,
    mag_matrix,
    magnify_frequencies,
    number_of_even_coefficients,
    number_of_odd_coefficients,
    odd_aberration_phase,
    odd_index_to_mn,
    parse_zernike_list,
    projection_matrix,
    reference_grid_scale,
    sector_assignment,
    zernike_cartesian,
    zernike_phase,
)


def wavelength(kv: float) -> float:
    v = kv * 1e3
    return 12.2643247 / math.sqrt(v * (1.0 + 0.978466e-6 * v))


def relion_half_grid(n: int, pixel: float) -> tuple[np.ndarray, np.ndarray]:
    """(kx, ky) in 1/Å on RELION's FFTW half grid (obs_model.cpp: y < sh ? y : y - s)."""
    sh = n // 2 + 1
    ky = np.array([y if y < sh else y - n for y in range(n)], dtype=float) / (n * pixel)
    kx = np.arange(sh, dtype=float) / (n * pixel)
    return np.broadcast_to(kx[None, :], (n, sh)).copy(), np.broadcast_to(
        ky[:, None], (n, sh)
    ).copy()


# --- Zernike.cpp, a second way ----------------------------------------------------------------


def test_index_maps_enumerate_orders_in_relion_order():
    # Enumerate the (m, n) lists order by order instead of RELION's closed forms.
    odd = [(m, n) for n in (1, 3, 5, 7) for m in range(-n, n + 1, 2)]
    even = [(m, n) for n in (0, 2, 4, 6) for m in range(-n, n + 1, 2)]
    assert [odd_index_to_mn(i) for i in range(len(odd))] == odd
    assert [even_index_to_mn(i) for i in range(len(even))] == even
    assert [number_of_odd_coefficients(n) for n in (1, 3, 5)] == [2, 6, 12]
    assert [number_of_even_coefficients(n) for n in (0, 2, 4)] == [1, 4, 9]


def _radial_loop(m: int, n: int, rho: float) -> float:
    if (n - m) % 2:
        return 0.0
    total = 0.0
    for k in range((n - m) // 2 + 1):
        num = (-1) ** k * math.factorial(n - k)
        den = (
            math.factorial(k) * math.factorial((n + m) // 2 - k) * math.factorial((n - m) // 2 - k)
        )
        total += num / den * rho ** (n - 2 * k)
    return total


def _z_cart_loop(m: int, n: int, x: float, y: float) -> float:
    rho, phi = math.hypot(x, y), (0.0 if x == 0 and y == 0 else math.atan2(y, x))
    return _radial_loop(abs(m), n, rho) * (math.cos(m * phi) if m >= 0 else math.sin(-m * phi))


def test_zernike_cartesian_closed_forms():
    x = torch.tensor([0.3, -0.2, 0.0, 0.11], dtype=torch.float64)
    y = torch.tensor([0.1, 0.25, 0.0, -0.07], dtype=torch.float64)
    r2 = x * x + y * y
    closed = {
        (-1, 1): y,
        (1, 1): x,
        (-1, 3): (3 * r2 - 2) * y,
        (1, 3): (3 * r2 - 2) * x,
        (-3, 3): 3 * x * x * y - y**3,
        (3, 3): x**3 - 3 * x * y * y,
        (0, 0): torch.ones_like(x),
        (-2, 2): 2 * x * y,
        (0, 2): 2 * r2 - 1,
        (2, 2): x * x - y * y,
        (0, 4): 6 * r2 * r2 - 6 * r2 + 1,
        (4, 4): x**4 - 6 * x * x * y * y + y**4,
        (-4, 4): 4 * x**3 * y - 4 * x * y**3,
    }
    for (m, n), want in closed.items():
        torch.testing.assert_close(zernike_cartesian(m, n, x, y), want, msg=f"Z({m},{n})")


def test_zernike_phase_matches_loops_and_batches():
    rng = np.random.default_rng(1)
    kx, ky = relion_half_grid(8, 1.5)
    coeffs = rng.normal(size=(3, 12))
    for parity, to_mn in (("odd", odd_index_to_mn), ("even", even_index_to_mn)):
        got = zernike_phase(torch.tensor(coeffs), torch.tensor(kx), torch.tensor(ky), parity)
        assert got.shape == (3, 8, 5)
        for b in range(3):
            want = np.zeros_like(kx)
            for yi in range(8):
                for xi in range(5):
                    for i in range(12):
                        m, n = to_mn(i)
                        want[yi, xi] += coeffs[b, i] * _z_cart_loop(m, n, kx[yi, xi], ky[yi, xi])
            np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-12, atol=1e-12)


# --- beam tilt (tilt_helper.cpp insertTilt) and the phase correction of obs_model.cpp -----------


def test_insert_beam_tilt_matches_insert_tilt_line_by_line():
    cs, lam, tx, ty = 2.7, wavelength(300.0), 0.8, -1.3
    scale = cs * 20000 * lam * lam * 3.141592654
    z3x, z3y = -scale * tx / 3.0, -scale * ty / 3.0
    odd = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    want = list(odd)
    want[1] += 2.0 * z3x
    want[0] += 2.0 * z3y
    want[4] += z3x
    want[3] += z3y
    got = insert_beam_tilt(torch.tensor(odd, dtype=torch.float64), tx, ty, cs, lam)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-14)
    # no odd column: RELION starts from six zeros
    got0 = insert_beam_tilt(torch.zeros(0, dtype=torch.float64), tx, ty, cs, lam)
    np.testing.assert_allclose(got0.numpy(), [2 * z3y, 2 * z3x, 0, z3y, z3x, 0], rtol=1e-14)
    # replace_coma: terms 3, 4 become the tilt's coma (Debian RELION 3.1.3's measured behaviour)
    rep = insert_beam_tilt(
        torch.tensor(odd, dtype=torch.float64), tx, ty, cs, lam, replace_coma=True
    )
    np.testing.assert_allclose(rep.numpy(), [want[0], want[1], 0.3, z3y, z3x, 0.6, 0.7], rtol=1e-14)
    # extractTilt undoes insertTilt when the stored coma terms 3, 4 are zero (as RELION writes them)
    stored = torch.tensor([0.1, 0.2, 0.3, 0.0, 0.0, 0.6, 0.7], dtype=torch.float64)
    back, btx, bty = extract_beam_tilt(insert_beam_tilt(stored, tx, ty, cs, lam), cs, lam)
    assert abs(float(btx) - tx) < 1e-12 and abs(float(bty) - ty) < 1e-12
    torch.testing.assert_close(back, stored, rtol=0, atol=1e-12)


def test_tilt_through_zernike_equals_closed_form_phase():
    kx, ky = (torch.tensor(a) for a in relion_half_grid(16, 1.1))
    lam = wavelength(200.0)
    via_zernike = odd_aberration_phase(kx, ky, None, (0.9, -0.4), 2.7, lam)
    direct = beam_tilt_phase(kx, ky, 0.9, -0.4, 2.7, lam)
    # −2π · 10⁴ · Cs · λ² · |k|² (k · t): the textbook antisymmetric beam-tilt term
    r2 = kx * kx + ky * ky
    textbook = -2 * math.pi * 1e4 * 2.7 * lam**2 * r2 * (0.9 * kx - 0.4 * ky)
    torch.testing.assert_close(via_zernike, direct, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(direct, textbook, rtol=1e-8, atol=1e-12)


def _phase_correction_loops(n, pixel, odd, mag):
    """obs_model.cpp getPhaseCorrection, loop for loop (RELION 3.1 row convention)."""
    sh, as_ = n // 2 + 1, pixel * n
    img = np.zeros((n, sh), dtype=complex)
    for y in range(n):
        for x in range(sh):
            xx0, yy0 = x / as_, (y if y < sh else y - n) / as_
            xx = mag[0][0] * xx0 + mag[0][1] * yy0
            yy = mag[1][0] * xx0 + mag[1][1] * yy0
            phase = 0.0
            for i, c in enumerate(odd):
                m, nn = odd_index_to_mn(i)
                phase += c * _z_cart_loop(m, nn, xx, yy)
            img[y, x] = complex(math.cos(phase), math.sin(phase))
    return img


def test_odd_phase_with_tilt_and_mag_matches_get_phase_correction():
    n, pixel, cs, lam = 12, 1.3, 2.7, wavelength(300.0)
    odd = [0.5, -0.3, 40.0, -20.0, 30.0, 25.0]
    mag = [[1.02, 0.01], [-0.005, 0.99]]
    full = insert_beam_tilt(torch.tensor(odd, dtype=torch.float64), 3.0, -2.0, cs, lam)
    want = _phase_correction_loops(n, pixel, full.tolist(), mag)
    kx, ky = (torch.tensor(a) for a in relion_half_grid(n, pixel))
    f64 = torch.float64
    phase = odd_aberration_phase(
        kx, ky, torch.tensor(odd, dtype=f64), (3.0, -2.0), cs, lam, torch.tensor(mag, dtype=f64)
    )
    np.testing.assert_allclose(aberration_factor(phase).numpy(), want, atol=1e-12)


def test_odd_factor_is_unit_modulus_odd_and_trivial_without_aberrations():
    kx, ky = (torch.tensor(a) for a in relion_half_grid(16, 1.0))
    lam = wavelength(300.0)
    zero = odd_aberration_phase(kx, ky, None, (0.0, 0.0), 2.7, lam)
    assert torch.count_nonzero(zero) == 0
    assert torch.count_nonzero(odd_aberration_phase(kx, ky)) == 0
    odd = torch.tensor([0.2, -0.1, 5.0, 3.0, -4.0, 7.0], dtype=torch.float64)
    ph = odd_aberration_phase(kx, ky, odd, (1.5, 0.5), 2.7, lam)
    torch.testing.assert_close(odd_aberration_phase(-kx, -ky, odd, (1.5, 0.5), 2.7, lam), -ph)
    f, g = aberration_factor(ph), aberration_factor(ph, observation=True)
    torch.testing.assert_close(f.abs(), torch.ones_like(ph))
    torch.testing.assert_close(f * g, torch.ones_like(f))
    even = torch.tensor([0.3, 20.0, -10.0, 15.0, 40.0, 5.0, -8.0, 2.0, 30.0], dtype=torch.float64)
    e = even_aberration_phase(kx, ky, even)
    torch.testing.assert_close(even_aberration_phase(-kx, -ky, even), e)


def test_odd_factor_keeps_a_real_image_real():
    # φ(−k) = −φ(k), so exp(iφ) is Hermitian and maps real images to real images.
    n = 16
    f = torch.fft.fftfreq(n, d=1.2, dtype=torch.float64)
    ky, kx = torch.meshgrid(f, f, indexing="ij")
    img = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ph = odd_aberration_phase(
        kx, ky, torch.tensor([1.0, 2.0, 30.0, 9.0, -7.0, 11.0]), (2.0, 1.0), 2.7, 0.0197
    )
    ph[n // 2, :] = 0.0  # Nyquist row/column: no partner on the full grid
    ph[:, n // 2] = 0.0
    out = torch.fft.ifft2(torch.fft.fft2(img) * aberration_factor(ph))
    assert out.imag.abs().max() < 1e-12
    assert (out.real - img).abs().max() > 1e-3


def test_batched_over_particles_float32():
    kx, ky = (torch.tensor(a, dtype=torch.float32) for a in relion_half_grid(8, 1.0))
    tx = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float32)
    ty = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float32)
    cs = torch.tensor([2.7, 2.7, 1.4], dtype=torch.float32)
    lam = torch.tensor([wavelength(300.0)] * 3, dtype=torch.float32)
    mags = mag_matrix([1.0, 1.01, 0.99], [0.0, 0.01, 0.0], [0.0, 0.0, -0.02], [1.0, 0.98, 1.0])
    ph = odd_aberration_phase(kx, ky, None, (tx, ty), cs, lam, mags.float())
    assert ph.shape == (3, 8, 5) and ph.dtype == torch.float32
    for b in range(3):
        one = odd_aberration_phase(
            kx, ky, None, (float(tx[b]), float(ty[b])), float(cs[b]), float(lam[b]), mags[b].float()
        )
        torch.testing.assert_close(ph[b], one)


# --- magnification ----------------------------------------------------------------------------


def test_magnify_and_projection_matrix_follow_apply_aniso_mag():
    from scipy.spatial.transform import Rotation

    a = torch.tensor(Rotation.from_euler("ZYZ", [20, 50, -30], degrees=True).as_matrix().T)
    m = torch.tensor([[1.03, 0.02], [-0.01, 0.98]], dtype=torch.float64)
    k = torch.tensor([3.0, -5.0], dtype=torch.float64)
    xm, ym = magnify_frequencies(k[0].reshape(1, 1), k[1].reshape(1, 1), m)
    mk = (m @ k).numpy()
    np.testing.assert_allclose([float(xm), float(ym)], mk, rtol=1e-14)
    # RELION: A' = M3^-1 A; its projector samples the map at A'^-1 (x, y, 0) = A^T (M k, 0)
    a_relion = aniso_mag_rotation(a, m)
    want = (a.T @ torch.tensor([mk[0], mk[1], 0.0], dtype=torch.float64)).numpy()
    got_relion = torch.linalg.inv(a_relion) @ torch.tensor([3.0, -5.0, 0.0], dtype=torch.float64)
    np.testing.assert_allclose(got_relion.numpy(), want, rtol=1e-12)
    # cryograd projectors sample at B^T (k, 0): B = s M3^T A gives the same point times s
    b = projection_matrix(a, m, 1.25)
    got = b.T @ torch.tensor([3.0, -5.0, 0.0], dtype=torch.float64)
    np.testing.assert_allclose(got.numpy(), 1.25 * want, rtol=1e-12)


def test_reference_grid_scale_keeps_physical_frequency():
    # group: box 200 at 1.1 Å; reference: box 256 at 0.9 Å. k/(N p) must equal k_ref/(N_ref p_ref).
    s = float(reference_grid_scale(200, 1.1, 256, 0.9))
    k = 37.0
    assert abs(k / (200 * 1.1) - k * s / (256 * 0.9)) < 1e-15


def test_singular_mag_matrix_is_refused():
    check_mag_matrix(mag_matrix(1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="singular"):
        check_mag_matrix(mag_matrix([1.0, 1.0], [0.0, 2.0], [0.0, 0.5], [1.0, 1.0]))
    with pytest.raises(CryogradError, match="rlnMagMat"):
        GroupAberrations.from_table(
            {
                "rlnMagMat00": [1.0],
                "rlnMagMat01": [2.0],
                "rlnMagMat10": [0.5],
                "rlnMagMat11": [1.0],
            },
            [wavelength(300.0)],
            "x.star",
        )


# --- Ewald sphere -----------------------------------------------------------------------------


def test_ewald_pieces_against_backprojector_and_ctf_formulas():
    lam = wavelength(300.0)
    r = float(ewald_radius_pixels(200, 1.0, lam))
    assert abs(r - 200.0 / lam) < 1e-9
    xu = torch.tensor([[3.0, -4.0]], dtype=torch.float64)
    yu = torch.tensor([[4.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(ewald_offset(xu, yu, r).numpy(), [[25 / (2 * r), 16 / (2 * r)]])
    np.testing.assert_allclose(
        ewald_offset(xu, yu, r, positive=False).numpy(), [[-25 / (2 * r), -16 / (2 * r)]]
    )
    assert torch.count_nonzero(ewald_offset(xu, yu, -1.0)) == 0
    gamma = torch.linspace(-4, 4, 9, dtype=torch.float64)
    p, q = ctf_p(gamma, True), ctf_p(gamma, False)
    torch.testing.assert_close(p, 1j * torch.exp(1j * gamma))
    torch.testing.assert_close(q, -1j * torch.exp(-1j * gamma))
    torch.testing.assert_close((p + q).real, -2 * torch.sin(gamma))  # P + Q = 2 CTF
    # weight: A = 1 at k = 0 (W = |CTF|), A = 0 once 2|Δf|λ|k| > D (W = 1/2)
    ctf = torch.tensor([0.3, -0.8, 0.5], dtype=torch.float64)
    dfs = torch.tensor([1e4, -1e4, 1e4], dtype=torch.float64)
    k = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    np.testing.assert_allclose(ewald_weight(ctf, dfs, k, lam, 200.0).numpy(), [0.3, 0.8, 0.5])
    aux, d = 0.4, 200.0
    kk = torch.tensor([aux * d / (2 * 1e4 * lam)], dtype=torch.float64)
    area = (2 / math.pi) * (math.acos(aux) - aux * math.sin(math.acos(aux)))
    one = torch.ones(1, dtype=torch.float64)
    got = float(ewald_weight(0.6 * one, 1e4 * one, kk, lam, d))
    assert abs(got - 0.5 * (1 + area * (2 * 0.6 - 1))) < 1e-12


def test_ctfp_sectors_partition_the_plane():
    n = 16
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    ky, kx = torch.meshgrid(f, torch.fft.rfftfreq(n, dtype=torch.float64), indexing="ij")
    for sectors in (2, 3, 4):
        covered = torch.zeros(ky.shape, dtype=torch.int64)
        for _angle, a, b, _swapped in sector_assignment(kx, ky, sectors):
            covered += a.long() + b.long()
        # RELION's sectors are half-open, so the angle 180° (kx = 0, ky < 0: Friedel duplicates that
        # the back-projector skips) is covered only when a sector wraps past 180°
        keep = ~((kx == 0) & (ky <= 0))
        assert bool((covered[keep] == 1).all()), f"{sectors} sectors"
        assert bool((covered[~keep] <= 1).all())
    gamma = torch.rand(n, n // 2 + 1, dtype=torch.float64) * 6
    img = ctfp_sector_image(gamma, kx, ky, True, 0.0)
    # angle 0: every pixel above the -y direction uses P; the kx = 0 column is Hermitian
    torch.testing.assert_close(img[1 : n // 2, 1:], ctf_p(gamma, True)[1 : n // 2, 1:])
    torch.testing.assert_close(img[n // 2 + 1 :, 0], img[1 : n // 2, 0].flip(0).conj())


# --- STAR files with aberration columns -------------------------------------------------------


def test_parse_zernike_list():
    assert parse_zernike_list("[1.5,-2,0]", "w") == [1.5, -2.0, 0.0]
    for bad in ("[]", "1,2", "[1,a]", "[nan]", 3.0):
        with pytest.raises(CryogradError, match="w"):
            parse_zernike_list(bad, "w")


@pytest.mark.parametrize("name", ["relion31.6opticsgroups.star", "relion5.star"])
def test_star_aberration_columns_parse_into_inputs(name, shared_data):
    starfile = pytest.importorskip("starfile")
    path = shared_data / "cryodrgn" / name
    if not path.exists():
        pytest.skip(f"{path} absent")
    optics = starfile.read(path)["optics"]
    g = len(optics)
    lam = [wavelength(v) for v in optics["rlnVoltage"]]
    ab = GroupAberrations.from_table(optics, lam, str(path))
    assert ab.odd.shape == (g, 6) and ab.even.shape == (g, 9) and ab.has_mag
    for i in range(g):
        raw = [float(t) for t in optics["rlnOddZernike"].iloc[i].strip("[]").split(",")]
        # RELION writes the odd list with the tilt extracted: coma terms 3, 4 are zero
        assert raw[3] == 0.0 and raw[4] == 0.0
        cs, tx, ty = (
            float(optics[c].iloc[i])
            for c in ("rlnSphericalAberration", "rlnBeamTiltX", "rlnBeamTiltY")
        )
        scale = cs * 20000 * lam[i] ** 2 * 3.141592654
        want = list(raw)
        want[1] += 2 * (-scale * tx / 3)
        want[0] += 2 * (-scale * ty / 3)
        want[4] += -scale * tx / 3
        want[3] += -scale * ty / 3
        np.testing.assert_allclose(ab.odd[i].numpy(), want, rtol=1e-12)
        m = [
            [optics["rlnMagMat00"].iloc[i], optics["rlnMagMat01"].iloc[i]],
            [optics["rlnMagMat10"].iloc[i], optics["rlnMagMat11"].iloc[i]],
        ]
        np.testing.assert_allclose(ab.mag[i].numpy(), m)
    # the parsed inputs drive the phase functions: unit modulus on the group's own grid
    n, pix = (
        int(optics["rlnImageSize"].iloc[0]) // 8,
        float(optics["rlnImagePixelSize"].iloc[0]) * 8,
    )
    kx, ky = (torch.tensor(a) for a in relion_half_grid(n, pix))
    ph = odd_aberration_phase(kx, ky, ab.odd, None, None, None, ab.mag)
    assert ph.shape == (g, n, n // 2 + 1) and bool(torch.isfinite(ph).all())
    assert bool(torch.isfinite(even_aberration_phase(kx, ky, ab.even, ab.mag)).all())
