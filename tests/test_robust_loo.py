"""--robust's leave-one-out scoring: against maps brute-force reconstructed without the particle,
and half a set of pure noise found (the self-inclusion bias had let the reference lock onto it)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cryograd.forward import ForwardModel
from cryograd.io.mrc import write_map
from cryograd.particles import read_particles
from cryograd.reconstruction.robust import RobustConfig, robust_particle_weights
from cryograd.reconstruction.robust_scores import LeaveOneOut, band_masks, fit_statistics
from cryograd.solvers.batches import load_batch
from cryograd.solvers.context import RunContext
from cryograd.solvers.direct import wiener_reconstruct
from cryograd.solvers.insertion import FourierInsertion, default_regularizer, insert_in_context
from tests._recon_data import pseudo_atom_map


@pytest.fixture(scope="module")
def noise_half(tmp_path_factory):
    """Box 32, 800 particles at SNR 0.2, half of them pure noise."""
    root = tmp_path_factory.mktemp("loo")
    write_map(root / "a.mrc", pseudo_atom_map(32, seed=1).astype(np.float32), 3.0)
    args = ["simulate", root / "a.mrc", "-n", 800, "-o", root / "s", "--snr", 0.2,
            "--projector", "real", "--seed", 3, "--junk", 0.5, "--junk-kind", "noise"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "cryograd", *map(str, args)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return read_particles(root / "s" / "particles.star")


def _auc(bad_score, labels) -> float:
    from scipy.stats import rankdata

    r = rankdata(bad_score)
    n1 = int(labels.sum())
    n0 = len(labels) - n1
    return float((r[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _amplitude(image: torch.Tensor, prediction: torch.Tensor, band: torch.Tensor) -> float:
    """``Re⟨B, P⟩ / ⟨P, P⟩`` over the band, from the images themselves (plain ``rfft2``)."""
    fb, fp = torch.fft.rfft2(image), torch.fft.rfft2(prediction)
    return float(((fb * fp.conj()).real * band).sum() / (fp.abs().square() * band).sum())


def test_leave_one_out_matches_the_map_without_the_particle(noise_half):
    ps = noise_half
    d = int(ps.box_size)
    half = np.arange(200)
    weights = np.where(np.arange(len(ps)) % 3 == 0, 0.5, 1.0)  # the w of h = κ w c² / (W + ρ)
    ctx = RunContext.create(device="cpu", dtype=torch.float64).with_weights(weights)
    ins = insert_in_context(ps, half, ctx, progress=False)
    rho = default_regularizer(ins)
    vol = wiener_reconstruct(ins, rho)
    kw = dict(band_shell=12, device="cpu", dtype=torch.float64, progress=False)
    plain = fit_statistics(ps, half, vol, **kw)
    loo = fit_statistics(ps, half, vol, leave_one_out=LeaveOneOut(ins.weights, rho, weights), **kw)
    model = ForwardModel(d, float(ps.pixel_size_angstrom), "fourier", 2.0)
    band = band_masks(d, 12, device="cpu", dtype=torch.float64)[0]
    brute, with_self = [], []
    picks = np.arange(0, 200, 17)
    for i in picks:  # brute force: insert i alone, take it out of the sums, divide again
        one = insert_in_context(ps, np.array([i]), ctx, progress=False)
        without = FourierInsertion(
            ins.numerator - one.numerator, ins.weights - one.weights, d, ins.padded, len(half) - 1
        )
        b = load_batch(ps, np.array([i]), device="cpu", dtype=torch.float64)
        for target, v in ((brute, wiener_reconstruct(without, rho)), (with_self, vol)):
            pred = model.project(v, b.rotations, b.shifts_px, b.model_filter())
            target.append(_amplitude(b.images, pred, band))
    brute_a, self_a = np.array(brute), np.array(with_self)
    # the direct slices of the padded spectrum are the forward model's projections
    np.testing.assert_allclose(plain.amplitude[picks], self_a, rtol=1e-6, atol=1e-9)
    bias = np.sqrt(np.mean((self_a - brute_a) ** 2))
    err = np.sqrt(np.mean((loo.amplitude[picks] - brute_a) ** 2))
    assert bias > 0.2  # the self-inclusion is large here (200 particles)
    assert err < 0.15 * bias  # first order, mean kernel: ≥ 85 % of it removed


def test_half_the_set_pure_noise_is_found(noise_half):
    ps = noise_half
    labels = ps.extra_columns["rlnCryogradJunk"].to_numpy()
    n = len(ps)
    halves = (np.arange(0, n, 2), np.arange(1, n, 2))
    ctx = RunContext.create(device="cpu")
    out = robust_particle_weights(ps, halves, ctx, RobustConfig(), progress=False)
    for half in halves:  # each half on its own: neither may lock onto its noise
        assert _auc(out.scores[half], labels[half]) >= 0.95
        assert np.mean(out.weights[half][labels[half] == 1] < 0.5) > 0.9
        assert np.mean(out.weights[half][labels[half] == 0] >= 0.5) > 0.9


def test_rounds_update_the_insertion_by_the_weight_changes(noise_half):
    """The kept sums (first insertion, then only the changed weights inserted, + and − apart)
    equal one insertion with the final weights."""
    ps = noise_half
    n = len(ps)
    halves = (np.arange(0, 200, 2), np.arange(1, 200, 2))
    prior = np.linspace(0.2, 1.0, n)
    ctx = RunContext.create(device="cpu", dtype=torch.float64).with_weights(prior)
    out = robust_particle_weights(
        ps, halves, ctx, RobustConfig(rounds=2), progress=False, keep_insertions=True
    )
    assert out.insertions is not None and len(out.history) == 2
    np.testing.assert_allclose(out.weights[:200], prior[:200] * _robust_part(out)[:200])
    for half, kept in zip(halves, out.insertions):
        fresh = insert_in_context(ps, half, ctx.with_weights(out.weights), progress=False)
        scale = float(fresh.weights.abs().max())
        assert float((kept.weights - fresh.weights).abs().max()) < 1e-9 * scale
        assert float((kept.numerator - fresh.numerator).abs().max()) < 1e-9 * float(
            fresh.numerator.abs().max()
        )


def _robust_part(out) -> np.ndarray:
    """The robust factor of the weights: the rule applied to the scores (student-t, ν = 4)."""
    u = out.scores
    return np.minimum(1.0, 5.0 / (4.0 + u * u))
