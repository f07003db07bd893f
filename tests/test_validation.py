"""Tests of cryograd.validation against numpy references, analytic curves and FSC theory."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from cryograd.errors import CryogradError
from cryograd.validation import (
    FSCResult,
    apply_shell_weights,
    compute_fsc_result,
    fsc,
    fsc_weight,
    inverse_tau2_from_fsc,
    masked_fsc_corrected,
    phase_randomize,
    resolution_at,
    shell_frequencies_inv_angstrom,
    shell_sums,
    soft_mask_from_map,
    split_halves,
    tau2_from_fsc,
)

# ------------------------------------------------------------------ numpy references


def _np_shells(n: int) -> np.ndarray:
    k = np.fft.fftfreq(n, d=1.0 / n)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.round(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)


def _np_fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC on the full DFT grid with numpy (origin placement does not change |.| or the product)."""
    n = a.shape[0]
    fa = np.fft.fftn(np.fft.ifftshift(a))
    fb = np.fft.fftn(np.fft.ifftshift(b))
    shells = _np_shells(n)
    out = np.zeros(n // 2 + 1)
    for s in range(n // 2 + 1):
        sel = shells == s
        num = np.real(np.sum(fa[sel] * np.conj(fb[sel])))
        den = np.sqrt(np.sum(np.abs(fa[sel]) ** 2) * np.sum(np.abs(fb[sel]) ** 2))
        out[s] = num / den
    return out


def _np_shell_counts(n: int) -> np.ndarray:
    return np.bincount(_np_shells(n).ravel())[: n // 2 + 1]


def _shape_spectrum(volume: np.ndarray, target_power: np.ndarray) -> np.ndarray:
    """Rescale each shell of ``volume``'s spectrum so its mean power is ``target_power[shell]``."""
    n = volume.shape[0]
    f = np.fft.fftn(volume)
    shells = np.minimum(_np_shells(n), n // 2 + 1)
    power = np.bincount(shells.ravel(), weights=np.abs(f.ravel()) ** 2)
    counts = np.bincount(shells.ravel())
    mean_power = power / np.maximum(counts, 1)
    target = np.append(target_power, 0.0)
    scale = np.sqrt(target / np.maximum(mean_power, 1e-300))
    return np.real(np.fft.ifftn(f * scale[shells]))


def _radius(n: int) -> np.ndarray:
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.sqrt(x**2 + y**2 + z**2)


# ------------------------------------------------------------------ FSC


@pytest.mark.parametrize("n", [24, 25])
def test_fsc_of_map_with_itself_is_one(n):
    v = torch.randn(n, n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f = fsc(v, v)
    assert f.shape == (n // 2 + 1,)
    assert torch.allclose(f, torch.ones_like(f), atol=1e-12)
    # scale invariance: FSC(v, 3 v) = 1 too
    assert torch.allclose(fsc(v, 3 * v), torch.ones_like(f), atol=1e-12)


@pytest.mark.parametrize("n", [24, 25])
def test_fsc_matches_numpy_reference(n):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((n, n, n))
    b = a + 0.7 * rng.standard_normal((n, n, n))
    mask = np.clip(1.2 - _radius(n) / (n / 2), 0, 1)
    got = fsc(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, _np_fsc(a, b), atol=1e-12)
    got_m = fsc(torch.from_numpy(a), torch.from_numpy(b), mask=torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got_m, _np_fsc(a * mask, b * mask), atol=1e-12)


def test_fsc_float32_and_device(device):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((16, 16, 16)).astype(np.float32)
    b = a + rng.standard_normal((16, 16, 16)).astype(np.float32)
    got = fsc(torch.from_numpy(a).to(device), torch.from_numpy(b).to(device))
    assert got.device.type == device.type
    np.testing.assert_allclose(got.cpu().numpy(), _np_fsc(a.astype(float), b), atol=1e-5)


def test_fsc_of_independent_noise_is_near_zero():
    n = 32
    g = torch.Generator().manual_seed(11)
    a = torch.randn(n, n, n, generator=g, dtype=torch.float64)
    b = torch.randn(n, n, n, generator=g, dtype=torch.float64)
    f = fsc(a, b).numpy()
    counts = _np_shell_counts(n)
    # the standard deviation of the FSC of independent noise is 1/sqrt(samples in the shell)
    bound = 3.0 / np.sqrt(counts)
    assert np.all(np.abs(f[1:]) < bound[1:]), np.abs(f[1:]) / bound[1:]


def test_fsc_rejects_different_shapes():
    with pytest.raises(ValueError):
        fsc(torch.zeros(8, 8, 8), torch.zeros(10, 10, 10))


# ------------------------------------------------------------------ resolution


def test_shell_frequencies():
    f = shell_frequencies_inv_angstrom(64, 2.0)
    assert f.shape == (33,)
    assert f[0] == 0 and math.isclose(float(f[-1]), 1 / 4.0)  # Nyquist 1 / (2 · 2 Å)
    assert math.isclose(float(f[10]), 10 / 128)


def test_resolution_at_linear_curve():
    box, apix = 64, 2.0
    n = np.arange(box // 2 + 1)
    curve = 1.0 - n / 20.0  # crosses 0.5 at shell 10 and 0.143 at shell 17.14
    assert math.isclose(resolution_at(curve, 0.5, box, apix), box * apix / 10.0, rel_tol=1e-9)
    expected = box * apix / (20.0 * (1 - 0.143))
    assert math.isclose(resolution_at(curve, 0.143, box, apix), expected, rel_tol=1e-9)


def test_resolution_at_gaussian_curve_close_to_analytic():
    box, apix = 128, 1.5
    n = np.arange(box // 2 + 1)
    s0 = 20.0
    curve = np.exp(-((n / s0) ** 2))
    # exact crossing of exp(-(n/s0)^2) = t at n = s0 sqrt(-ln t)
    for t in (0.5, 0.143):
        n_t = s0 * math.sqrt(-math.log(t))
        assert math.isclose(resolution_at(curve, t, box, apix), box * apix / n_t, rel_tol=5e-3)


def test_resolution_at_never_crossing_is_nyquist_and_torch_input():
    curve = torch.ones(33, dtype=torch.float64)
    assert resolution_at(curve, 0.143, 64, 1.7) == pytest.approx(3.4)
    # crossing between shell 0 (1.0) and shell 1 (0.0): at 0.857 of the first shell
    curve = np.zeros(33)
    curve[0] = 1.0
    assert resolution_at(curve, 0.143, 64, 1.0) == pytest.approx(64 / (1 - 0.143))


# ------------------------------------------------------------------ phase randomisation


def test_phase_randomize_keeps_amplitudes_and_low_shells():
    n, beyond = 32, 6
    v = torch.randn(n, n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    r = phase_randomize(v, beyond, seed=7)
    fa = np.fft.fftn(np.fft.ifftshift(v.numpy()))
    fr = np.fft.fftn(np.fft.ifftshift(r.numpy()))
    np.testing.assert_allclose(np.abs(fr), np.abs(fa), rtol=1e-9, atol=1e-9)
    k = np.fft.fftfreq(n, d=1.0 / n)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    low = kx**2 + ky**2 + kz**2 <= beyond**2
    np.testing.assert_allclose(fr[low], fa[low], atol=1e-9)
    f = fsc(v, r).numpy()
    counts = _np_shell_counts(n)
    assert np.allclose(f[:beyond], 1.0, atol=1e-12)  # shell 6 straddles |k| = 6
    hi = np.arange(beyond + 1, n // 2 + 1)
    assert np.all(np.abs(f[hi]) < 4.0 / np.sqrt(counts[hi])), f[hi]
    # reproducible with the seed, different with another seed
    assert torch.equal(phase_randomize(v, beyond, seed=7), r)
    assert not torch.allclose(phase_randomize(v, beyond, seed=8), r)


# ------------------------------------------------------------------ masked, corrected FSC


def test_corrected_masked_fsc_matches_theory_for_known_snr():
    """Half maps = S + N_i with a known SNR per shell; S lies inside the mask.

    Masking leaves S unchanged and scales the noise power by w2 = mean(mask²), so the FSC within
    the mask is SNR' / (1 + SNR') with SNR' = SNR / w2 (the noise spectrum is smooth).
    """
    n = 64
    rng = np.random.default_rng(0)
    r = _radius(n)
    envelope = np.clip((18 - r) / 4, 0, 1)  # signal inside a sphere of radius 18 px
    signal = _shape_spectrum(rng.standard_normal((n, n, n)), np.ones(n // 2 + 1)) * envelope
    fs = np.fft.fftn(signal)
    shells = np.minimum(_np_shells(n), n // 2 + 1)
    p_signal = (
        np.bincount(shells.ravel(), weights=np.abs(fs.ravel()) ** 2) / np.bincount(shells.ravel())
    )[: n // 2 + 1]
    s = np.arange(n // 2 + 1)
    snr = 20.0 * np.exp(-s / 5.0)  # unmasked FSC drops below 0.8 at shell 9
    halves = []
    for _ in range(2):
        noise = _shape_spectrum(rng.standard_normal((n, n, n)), p_signal / snr)
        halves.append(torch.from_numpy(signal + noise))
    mask = np.where(r <= 22, 1.0, np.where(r >= 28, 0.0, 0.5 + 0.5 * np.cos(np.pi * (r - 22) / 6)))
    w2 = np.mean(mask**2)
    d = masked_fsc_corrected(halves[0], halves[1], torch.from_numpy(mask), 2.0, seed=1)
    counts = _np_shell_counts(n)
    unmasked_theory = snr / (1 + snr)
    masked_theory = (snr / w2) / (1 + snr / w2)
    tol = 0.03 + 3.0 / np.sqrt(counts)
    sel = np.arange(3, n // 2)
    fu = d["fsc_unmasked"].numpy()
    fc = d["fsc_corrected"].numpy()
    assert np.all(np.abs(fu[sel] - unmasked_theory[sel]) < tol[sel])
    assert np.all(np.abs(fc[sel] - masked_theory[sel]) < tol[sel]), fc[sel] - masked_theory[sel]
    # masking raises the FSC where noise matters: resolution improves
    f_res = resolution_at(fu, 0.143, n, 2.0)
    assert d["resolution_143_angstrom"] < f_res
    assert d["randomize_from_shell"] == int(np.nonzero(fu[1:] < 0.8)[0][0]) + 1 == 9
    # the unmasked theory misses the same tolerance in most shells: the test tells them apart
    assert np.mean(np.abs(fc - unmasked_theory)[sel] > tol[sel]) > 0.5


def test_corrected_fsc_removes_correlation_made_by_a_sharp_mask():
    """Signal shared only below shell 6; a hard mask spreads it into high shells (spurious FSC)."""
    n = 48
    rng = np.random.default_rng(4)
    r = _radius(n)
    s = np.arange(n // 2 + 1)
    low = np.where(s <= 6, 1.0, 0.0)
    # white noise of variance 1 has power n³ per Fourier sample: SNR ≈ 900 below shell 6
    signal = _shape_spectrum(rng.standard_normal((n, n, n)), 1e8 * low)
    halves = [torch.from_numpy(signal + rng.standard_normal((n, n, n))) for _ in range(2)]
    mask = torch.from_numpy((r <= 12).astype(np.float64))
    d = masked_fsc_corrected(halves[0], halves[1], mask, 1.0, seed=3)
    assert d["randomize_from_shell"] == 7
    counts = _np_shell_counts(n)
    hi = np.arange(d["randomize_from_shell"] + 2, n // 2 + 1)  # RELION's switch, 2 shells out
    fu = d["fsc_unmasked"].numpy()
    fm = d["fsc_masked"].numpy()
    fc = d["fsc_corrected"].numpy()
    assert np.all(np.abs(fu[hi]) < 4.0 / np.sqrt(counts[hi]))  # no shared signal there
    assert np.mean(fm[hi]) > 0.3 and np.all(fm[hi] > 0.1)  # the mask's own correlation
    assert np.all(np.abs(fc[hi]) < 4.0 / np.sqrt(counts[hi]) + 0.05), fc[hi]


def test_masked_fsc_without_randomisation_when_fsc_stays_high():
    v = torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.ones_like(v)
    d = masked_fsc_corrected(v, v, mask, 1.0)
    assert d["randomize_from_shell"] is None and d["fsc_randomized_masked"] is None
    assert torch.allclose(d["fsc_corrected"], d["fsc_masked"])


def test_compute_fsc_result_and_csv(tmp_path):
    g = torch.Generator().manual_seed(9)
    v = torch.randn(20, 20, 20, generator=g, dtype=torch.float64)
    a = v + 0.5 * torch.randn(20, 20, 20, generator=g, dtype=torch.float64)
    b = v + 0.5 * torch.randn(20, 20, 20, generator=g, dtype=torch.float64)
    res = compute_fsc_result(a, b, 1.5)
    assert isinstance(res, FSCResult) and res.fsc_masked is None
    np.testing.assert_allclose(res.fsc_unmasked, _np_fsc(a.numpy(), b.numpy()), atol=1e-12)
    assert res.resolution_143_angstrom == resolution_at(res.fsc_unmasked, 0.143, 20, 1.5)
    mask = torch.from_numpy(np.clip((9 - _radius(20)) / 3, 0, 1))
    res_m = compute_fsc_result(a, b, 1.5, mask=mask, seed=2)
    path = res_m.to_csv(tmp_path / "fsc.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["fsc.csv"]  # no temp file left behind
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 11
    assert set(rows[0]) >= {"shell", "frequency_inv_angstrom", "fsc_unmasked", "fsc_corrected"}
    np.testing.assert_allclose([float(r["fsc_masked"]) for r in rows], res_m.fsc_masked, atol=1e-6)
    assert float(rows[10]["frequency_inv_angstrom"]) == pytest.approx(1 / 3.0, abs=1e-6)


# ------------------------------------------------------------------ masks


def test_soft_mask_from_a_ball():
    n = 48
    r = _radius(n)
    ball = torch.from_numpy((r <= 8).astype(np.float64))
    m = soft_mask_from_map(ball, extend_px=3, soft_edge_px=6).numpy()
    assert m.min() >= 0 and m.max() <= 1
    assert np.all(m[r <= 10] == 1.0)  # ball (≈8 px after the low-pass) plus 3 px extension
    assert np.all(m[r >= 20] == 0.0)  # at most 8 + 3 + 6 px (+1 for the low-pass)
    edge = (m > 0) & (m < 1)
    assert edge.any()
    # radially non-increasing
    for rad in range(0, 22):
        inner, outer = m[np.abs(r - rad) < 0.5], m[np.abs(r - rad - 1) < 0.5]
        assert inner.min() >= outer.max() - 1e-12
    # explicit threshold too high: no voxel left
    with pytest.raises(ValueError):
        soft_mask_from_map(ball, threshold=5.0)


def test_soft_mask_cosine_edge_values():
    n = 40
    point = torch.zeros(n, n, n, dtype=torch.float64)
    point[20, 20, 20] = 1.0
    m = soft_mask_from_map(point, threshold=0.5, extend_px=2, soft_edge_px=4, lowpass_sigma_px=0)
    m = m.numpy()
    # along x from the point: distance d -> 1 for d <= 2, 0.5 + 0.5 cos(pi (d - 2) / 4) after
    line = m[20, 20, 20:30]
    expected = [1, 1, 1] + [0.5 + 0.5 * math.cos(math.pi * k / 4) for k in (1, 2, 3, 4)] + [0, 0, 0]
    np.testing.assert_allclose(line, expected, atol=1e-12)


# ------------------------------------------------------------------ FSC weighting


def test_fsc_weight_formula():
    f = torch.tensor([1.0, 0.5, 0.143, 0.0, -0.3, 1.2], dtype=torch.float64)
    w = fsc_weight(f).numpy()
    expected = [1.0, math.sqrt(2 * 0.5 / 1.5), math.sqrt(2 * 0.143 / 1.143), 0.0, 0.0, 1.0]
    np.testing.assert_allclose(w, expected, atol=1e-12)


def test_apply_shell_weights_matches_numpy():
    n = 21
    rng = np.random.default_rng(1)
    v = rng.standard_normal((n, n, n))
    w = np.linspace(1.0, 0.2, n // 2 + 1)
    got = apply_shell_weights(torch.from_numpy(v), torch.from_numpy(w)).numpy()
    f = np.fft.fftn(np.fft.ifftshift(v))
    shells = _np_shells(n)
    w_ext = np.append(w, 0.0)
    ref = np.fft.fftshift(np.real(np.fft.ifftn(f * w_ext[np.minimum(shells, n // 2 + 1)])))
    np.testing.assert_allclose(got, ref, atol=1e-12)
    with pytest.raises(ValueError):
        apply_shell_weights(torch.from_numpy(v), torch.ones(3))


# ------------------------------------------------------------------ half sets


def test_split_halves_random():
    i1, i2 = split_halves(101, seed=3)
    assert len(i1) == 51 and len(i2) == 50
    assert np.array_equal(np.sort(np.concatenate([i1, i2])), np.arange(101))
    j1, j2 = split_halves(101, seed=3)
    assert np.array_equal(i1, j1) and np.array_equal(i2, j2)
    k1, _ = split_halves(101, seed=4)
    assert not np.array_equal(i1, k1)
    assert np.all(np.diff(i1) > 0)


def test_split_halves_from_random_subset():
    hs = np.array([1, 2, 2, 1, 1, 2])
    i1, i2 = split_halves(6, seed=0, half_set=hs)
    assert i1.tolist() == [0, 3, 4] and i2.tolist() == [1, 2, 5]
    with pytest.raises(CryogradError, match="particle 2"):
        split_halves(3, 0, half_set=[1, 3, 2])
    with pytest.raises(CryogradError):
        split_halves(3, 0, half_set=[1, 1, 1])
    with pytest.raises(CryogradError):
        split_halves(3, 0, half_set=[1, 2])
    with pytest.raises(CryogradError):
        split_halves(1, 0)


# ------------------------------------------------------------------ RELION's tau2


def test_tau2_from_fsc_formula():
    f = torch.tensor([0.9, 0.5, 0.0, 1.0, 0.3], dtype=torch.float64)
    sums = torch.tensor([200.0, 50.0, 10.0, 80.0, 0.0], dtype=torch.float64)
    counts = torch.tensor([10.0, 10.0, 10.0, 20.0, 10.0], dtype=torch.float64)
    tau2 = tau2_from_fsc(f, sums, counts).numpy()
    fc = np.array([0.9, 0.5, 0.001, 0.999, 0.3])
    ssnr = fc / (1 - fc)
    expected = ssnr * np.array([10 / 200, 10 / 50, 10 / 10, 20 / 80, 0.0])
    np.testing.assert_allclose(tau2, expected, rtol=1e-12)
    # whole-set conversion and fudge
    tw = tau2_from_fsc(f[:1], sums[:1], counts[:1], whole_instead_of_half=True, tau2_fudge=2.0)
    fw = math.sqrt(2 * 0.9 / 1.9)
    assert float(tw[0]) == pytest.approx(2.0 * fw / (1 - fw) * 10 / 200)
    inv = inverse_tau2_from_fsc(f, sums, counts).numpy()
    np.testing.assert_allclose(inv[:4], 1 / expected[:4], rtol=1e-12)
    assert inv[4] == pytest.approx(1 / (0.001 * 20.0))  # fallback: 1 / (0.001 · max mean weight)


def test_inverse_tau2_scales_with_the_weights():
    """The Wiener term is a noise-to-signal ratio in weight units: scaling the CTF² weights by c
    scales 1/τ² by c, so the reconstruction Σ CTF·X / (Σ CTF² + 1/τ²) keeps its filter."""
    f = torch.tensor([0.95, 0.6, 0.2], dtype=torch.float64)
    sums = torch.tensor([30.0, 12.0, 3.0], dtype=torch.float64)
    counts = torch.tensor([5.0, 6.0, 7.0], dtype=torch.float64)
    a = inverse_tau2_from_fsc(f, sums, counts)
    b = inverse_tau2_from_fsc(f, 7.5 * sums, counts)
    assert torch.allclose(b, 7.5 * a)
    # Wiener filter of the mean weight: mean_w / (mean_w + 1/tau2) = SSNR / (1 + SSNR) = FSC
    mean_w = sums / counts
    np.testing.assert_allclose((mean_w / (mean_w + a)).numpy(), f.numpy(), rtol=1e-12)


def test_shell_sums():
    idx = torch.tensor([0, 1, 1, 2, 5])
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    s, c = shell_sums(vals, idx, 3)
    assert s.tolist() == [1.0, 5.0, 4.0] and c.tolist() == [1.0, 2.0, 1.0]
