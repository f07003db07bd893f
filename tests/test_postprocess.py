"""Formulas of cryograd.postprocess against independent references: Guinier slopes of maps with a
known B-factor, the corrected FSC of a map with known noise, brute-force mask distances, RELION's
own mask, local resolution of halves whose noise differs between two regions."""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest
import torch

from cryograd.postprocess import create_mask, fit_guinier, guinier_curve, postprocess
from cryograd.postprocess.filters import frequency_radius
from cryograd.postprocess.locres import LocresConfig, local_resolution
from cryograd.postprocess.masks import sphere_mask
from cryograd.postprocess.sharpen import MTF, bfactor_weights, mtf_weights


def _unit_phases(box: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spec = torch.fft.rfftn(torch.randn((box,) * 3, generator=g, dtype=torch.float64))
    return spec / spec.abs().clamp_min(1e-300)


def _map_with_bfactor(box: int, apix: float, bfactor: float, seed: int = 0) -> torch.Tensor:
    """Random phases, amplitude exactly exp(-B s² / 4)."""
    s = frequency_radius(box) / (box * apix)
    return torch.fft.irfftn(torch.exp(-bfactor * s**2 / 4) * _unit_phases(box, seed), s=(box,) * 3)


@pytest.mark.parametrize("bfactor", [50.0, 150.0])
def test_guinier_fit_recovers_known_bfactor(bfactor):
    box, apix = 48, 1.5
    vol = _map_with_bfactor(box, apix, bfactor)
    fit = fit_guinier(guinier_curve(torch.fft.rfftn(vol), apix), high_res_angstrom=3.2)
    assert fit.bfactor_a2 == pytest.approx(-bfactor, rel=0.03)  # ln|F| slope is -B/4
    assert fit.correlation < -0.99


def test_negative_bfactor_sharpens_back_to_flat():
    box, apix, b = 48, 1.5, 120.0
    spec = torch.fft.rfftn(_map_with_bfactor(box, apix, b)) * bfactor_weights(box, -b, apix)
    fit = fit_guinier(guinier_curve(spec, apix), high_res_angstrom=3.2)
    assert abs(fit.bfactor_a2) < 0.03 * b


def _relion_divide_by_mtf(s_inv_a: float, x: np.ndarray, y: np.ndarray) -> float:
    """The MTF value RELION's ``divideByMtf`` uses at one frequency (its loop, written out)."""
    step = (x[-1] - x[0]) / len(x)
    i0 = math.floor(s_inv_a / step)
    if i0 >= len(y) - 1:
        return y[-1]
    if i0 <= 0:
        return y[0]
    return y[i0] + (y[i0 + 1] - y[i0]) * (s_inv_a - x[i0]) / (x[i0 + 1] - x[i0])


def test_mtf_weights_follow_relion_interpolation():
    box, apix, det_apix = 32, 2.0, 1.0
    res_pix = np.linspace(0, 0.5, 11)
    val = np.linspace(1.0, 0.4, 11)
    w = mtf_weights(MTF(res_pix, val), box, apix, det_apix)
    s = (frequency_radius(box) / (box * apix)).reshape(-1)
    flat = w.reshape(-1)
    for i in np.random.default_rng(0).choice(s.numel(), 300, replace=False):
        si = float(s[i])
        if si < 1 / (2 * apix):
            ref = 1.0 / _relion_divide_by_mtf(si, res_pix / det_apix, val)
        else:
            ref = 1.0
        assert float(flat[i]) == pytest.approx(ref, rel=1e-9)
    const = mtf_weights(MTF(res_pix, np.full(11, 0.5)), box, apix)
    assert torch.all((const == 2.0) | (const == 1.0))


def test_corrected_fsc_of_map_with_known_noise():
    """Signal inside a sphere plus white noise of known σ: the corrected masked FSC should be
    S / (S + σ² Σ m²), with S the shell power of the masked signal (an independent formula)."""
    box, apix, sigma = 48, 2.0, 0.6
    g = torch.Generator().manual_seed(3)
    r = frequency_radius(box)
    blob = torch.fft.irfftn(
        torch.fft.rfftn(torch.randn((box,) * 3, generator=g, dtype=torch.float64))
        * torch.exp(-((r / 10) ** 2)),
        s=(box,) * 3,
    )
    support = sphere_mask(box, 10, 3)
    signal = 8.0 * torch.fft.fftshift(blob) * support
    h1 = signal + sigma * torch.randn((box,) * 3, generator=g, dtype=torch.float64)
    h2 = signal + sigma * torch.randn((box,) * 3, generator=g, dtype=torch.float64)
    mask = sphere_mask(box, 14, 4)
    res = postprocess(h1, h2, apix, mask=mask)
    spec = torch.fft.rfftn(signal * mask)
    from cryograd.fourier import shell_index

    idx = shell_index(box).reshape(-1)
    n = box // 2 + 1
    keep = idx < n
    power = torch.bincount(idx[keep], (spec.abs() ** 2).reshape(-1)[keep], minlength=n)
    counts = torch.bincount(idx[keep], minlength=n)
    s_mean = (power / counts).numpy()
    expected = s_mean / (s_mean + sigma**2 * float((mask**2).sum()))
    start = res.fsc.randomize_from_shell + 2
    got = res.fsc.fsc_corrected[start:n]
    assert np.max(np.abs(got - expected[start:n])) < 0.08
    # the unmasked FSC is lower (noise of the whole box), so randomisation started early
    assert res.fsc.fsc_unmasked[start:].mean() < got.mean()


def _brute_force_relion_mask(binary: np.ndarray, extend: float, width: float) -> np.ndarray:
    """RELION's autoMask loops, written out (all pairs of voxels)."""
    pts = np.argwhere(np.ones_like(binary))
    on = np.argwhere(binary)
    d2 = ((pts[:, None, :] - on[None, :, :]) ** 2).sum(-1).min(axis=1).reshape(binary.shape)
    ext = binary | (d2 < extend**2)
    on = np.argwhere(ext)
    d2 = ((pts[:, None, :] - on[None, :, :]) ** 2).sum(-1).min(axis=1).reshape(binary.shape)
    out = ext.astype(np.float64)
    edge = ~ext & (d2 < width**2)
    out[edge] = 0.5 + 0.5 * np.cos(np.pi * np.sqrt(d2[edge]) / width)
    return out


def test_mask_matches_brute_force_rules():
    rng = np.random.default_rng(1)
    vol = np.zeros((18, 18, 18))
    vol[7:10, 6:12, 8:10] = 1.0
    vol[11, 11, 11] = 1.0
    vol += 0.01 * rng.standard_normal(vol.shape)
    mask = create_mask(
        torch.from_numpy(vol), 1.0, 0.5, extend_px=2, soft_edge_px=3.5, lowpass_angstrom=None
    )
    ref = _brute_force_relion_mask(vol >= 0.5, 2, 3.5)
    np.testing.assert_allclose(mask.numpy(), ref, atol=1e-12)


def test_mask_of_a_sphere_has_the_expected_radii():
    box, radius, extend, width = 40, 8, 3, 4
    c = np.arange(box) - box // 2
    rho = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    vol = torch.from_numpy((rho <= radius).astype(np.float64))
    mask = create_mask(
        vol, 1.0, 0.5, extend_px=extend, soft_edge_px=width, lowpass_angstrom=None
    ).numpy()
    assert np.all(mask[rho <= radius + extend - 1.0] == 1.0)  # voxel-centre gaps < 1 px
    assert np.all(mask[rho >= radius + extend + width] == 0.0)
    # the radial mean of the edge crosses 0.5 halfway through it: radius + extend + width / 2
    shells = np.arange(radius, radius + extend + width + 2, 0.5)
    prof = np.array([mask[np.abs(rho - r) < 0.25].mean() for r in shells])
    half = shells[np.argmax(prof < 0.5)]
    assert half == pytest.approx(radius + extend + width / 2, abs=1.0)


def test_empty_threshold_names_the_threshold():
    from cryograd.errors import CryogradError

    with pytest.raises(CryogradError, match="threshold"):
        create_mask(torch.zeros(16, 16, 16), 1.0, 1.0)


@pytest.mark.skipif(shutil.which("relion_mask_create") is None, reason="RELION not installed")
def test_mask_equals_relion_mask_create(tmp_path):
    import mrcfile

    from cryograd.io.mrc import write_map

    box, apix = 32, 3.0
    rng = np.random.default_rng(5)
    c = np.arange(box) - box // 2
    rho = np.sqrt(c[:, None, None] ** 2 + (c[None, :, None] - 3) ** 2 + c[None, None, :] ** 2)
    vol = np.exp(-((rho / 6) ** 2)) + 0.05 * rng.standard_normal((box,) * 3)
    write_map(tmp_path / "in.mrc", vol.astype(np.float32), apix)
    subprocess.run(
        [
            "relion_mask_create",
            "--i",
            str(tmp_path / "in.mrc"),
            "--o",
            str(tmp_path / "m.mrc"),
            "--ini_threshold",
            "0.3",
            "--extend_inimask",
            "2",
            "--width_soft_edge",
            "4",
            "--lowpass",
            "15",
            "--angpix",
            str(apix),
        ],
        check=True,
        capture_output=True,
    )
    ref = mrcfile.read(tmp_path / "m.mrc")
    vol32 = torch.from_numpy(vol.astype(np.float32).astype(np.float64))
    mine = create_mask(vol32, apix, 0.3, extend_px=2, soft_edge_px=4, lowpass_angstrom=15)
    assert np.abs(mine.numpy() - ref).max() < 1e-3


def test_locres_finds_the_better_region():
    """Same signal everywhere, noise 4x larger (in amplitude) for x >= N/2. Per DFT sample the
    signal power is A² exp(-B s² / 2) and the noise power σ² N³, so with A = 10 N^1.5 the FSC
    crosses 0.143 where (100 / σ²) exp(-B s² / 2) = 0.143 / 0.857 in each region."""
    box, apix, bfac = 48, 2.0, 300.0
    signal = 10 * box**1.5 * _map_with_bfactor(box, apix, bfac, seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.arange(box, dtype=torch.float64)
    sig_x = torch.where(x < box // 2, 0.5, 2.0).view(1, 1, -1)
    h1 = signal + sig_x * torch.randn((box,) * 3, generator=g, dtype=torch.float64)
    h2 = signal + sig_x * torch.randn((box,) * 3, generator=g, dtype=torch.float64)
    cfg = LocresConfig(sampling_angstrom=16.0, randomize_at_angstrom=20.0, device="cpu")
    loc = local_resolution(h1, h2, apix, cfg)
    expected = {
        sigma: 1 / math.sqrt(2 * math.log(100 / sigma**2 * 0.857 / 0.143) / bfac)
        for sigma in (0.5, 2.0)
    }
    pts, res = loc.points, loc.resolutions_angstrom
    good = np.median(res[pts[:, 2] <= 12])
    bad = np.median(res[pts[:, 2] >= 36])
    assert good == pytest.approx(expected[0.5], rel=0.1)
    assert bad == pytest.approx(expected[2.0], rel=0.1)
    # the map: the harmonic mean of the spheres' resolutions, between the two values
    lm = loc.locres_angstrom.numpy()
    assert np.median(lm[:, :, 4:10]) == pytest.approx(good, rel=0.05)
    assert np.median(lm[:, :, 38:44]) == pytest.approx(bad, rel=0.05)
