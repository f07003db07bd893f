"""--robust: junk detection against the simulated junk labels, maps against the truth, the gold
standard (half 1's weights ignore half 2), outputs and bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cryograd.io.mrc import read_map, write_map
from cryograd.particles import read_particles
from cryograd.reconstruction.robust import RobustConfig, robust_particle_weights
from cryograd.reconstruction.robust_rules import ROBUST_RULES, robust_weights
from cryograd.reconstruction.run import reconstruct
from cryograd.solvers.context import RunContext
from cryograd.solvers.penalties import prox_sorted_l1
from cryograd.validation import fsc
from tests._recon_data import pseudo_atom_map, soft_sphere


def _auc(bad_score, labels):
    from scipy.stats import rankdata

    r = rankdata(bad_score)
    n1 = int(labels.sum())
    n0 = len(labels) - n1
    return (r[labels == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def _cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "cryograd", *map(str, args)], capture_output=True, text=True
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def junk_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    write_map(root / "a.mrc", pseudo_atom_map(32, seed=1).astype(np.float32), 3.0)
    write_map(root / "b.mrc", pseudo_atom_map(32, seed=5).astype(np.float32), 3.0)
    common = ["-n", 1600, "--snr", 0.2, "--projector", "real", "--seed", 3]
    _cli("simulate", root / "a.mrc", "-o", root / "clean", *common)
    _cli(
        "simulate", root / "a.mrc", "-o", root / "junk", *common,
        "--junk", 0.25, "--junk-map", root / "b.mrc",
    )  # fmt: skip
    return root


def _truth_fsc(vol, truth):
    t = torch.from_numpy(truth.astype(np.float64))
    m = soft_sphere(t.shape[0], 0.4 * t.shape[0])
    x = vol.double()
    return float(fsc(x, t)[1:].mean()), float(fsc(x * m, t * m)[1:].mean())


def test_junk_columns_marked(junk_set):
    ps = read_particles(junk_set / "junk" / "particles.star")
    labels = ps.extra_columns["rlnCryogradJunk"].to_numpy()
    kinds = set(ps.extra_columns["rlnCryogradJunkKind"])
    assert labels.sum() == 400
    assert kinds == {"none", "noise", "blob", "other", "pose"}


def test_robust_recovers_clean_map_and_finds_junk(junk_set):
    truth = read_map(junk_set / "a.mrc").data
    ps = read_particles(junk_set / "junk" / "particles.star")
    clean = read_particles(junk_set / "clean" / "particles.star")
    labels = ps.extra_columns["rlnCryogradJunk"].to_numpy()
    kinds = ps.extra_columns["rlnCryogradJunkKind"].to_numpy()
    ref = _truth_fsc(reconstruct(clean, "direct", progress=False).map, truth)
    plain = _truth_fsc(reconstruct(ps, "direct", progress=False).map, truth)
    res = reconstruct(ps, "direct", progress=False, robust=RobustConfig())
    rob = _truth_fsc(res.map, truth)
    assert rob[0] > ref[0] - 0.03 and rob[1] > ref[1] - 0.03
    assert rob[1] > plain[1]
    for kind in ("noise", "blob", "other", "pose"):
        rows = (kinds == kind) | (labels == 0)
        assert _auc(res.robust.scores[rows], labels[rows]) > 0.9, kind
    assert 0.1 < res.robust.fraction_down_weighted() < 0.4
    clean_res = reconstruct(clean, "direct", progress=False, robust=RobustConfig())
    assert _truth_fsc(clean_res.map, truth)[0] > ref[0] - 0.01


def test_half1_weights_ignore_half2(junk_set):
    ps = read_particles(junk_set / "junk" / "particles.star")
    n = len(ps)
    h1, h2 = np.arange(0, n, 2), np.arange(1, n, 2)
    ctx = RunContext.create(device="cpu")
    a = robust_particle_weights(ps, (h1, h2), ctx, RobustConfig(), progress=False)
    b = robust_particle_weights(ps, (h1, h2[: len(h2) // 3]), ctx, RobustConfig(), progress=False)
    np.testing.assert_array_equal(a.weights[h1], b.weights[h1])
    np.testing.assert_array_equal(a.scores[h1], b.scores[h1])


def test_auto_rounds_add_a_second_round_only_when_junk_is_found(junk_set):
    ctx = RunContext.create(device="cpu")
    runs = {}
    for name in ("clean", "junk"):
        ps = read_particles(junk_set / name / "particles.star")
        halves = (np.arange(0, len(ps), 2), np.arange(1, len(ps), 2))
        runs[name] = robust_particle_weights(ps, halves, ctx, RobustConfig(), progress=False)
    assert len(runs["clean"].history) == 1  # nothing to re-score: one round
    assert max(runs["clean"].history[0].values()) <= 0.1
    assert len(runs["junk"].history) == 2  # 25 %: re-scored against the re-weighted map
    assert max(runs["junk"].history[0].values()) > 0.1


def test_rules_in_unit_interval_and_monotone():
    u = np.linspace(0, 20, 201)
    for rule in ROBUST_RULES:
        w = robust_weights(u, rule)
        assert np.all((w >= 0) & (w <= 1)), rule
        assert w[0] == 1.0 and w[-1] < 0.2, rule
        if rule != "sorted-l1":  # its thresholds grow with the rank: not separable
            assert np.all(np.diff(w) <= 1e-12), rule
    # sorted-l1 prox with equal λ is soft thresholding
    x = np.array([5.0, 0.5, 3.0])
    prox = prox_sorted_l1(torch.from_numpy(x), torch.full((3,), 1.0)).numpy()
    np.testing.assert_allclose(prox, [4.0, 0.0, 2.0])


def test_cli_outputs(junk_set, tmp_path):
    out = tmp_path / "r"
    star = junk_set / "junk" / "particles.star"
    _cli("reconstruct", star, "-o", out, "--robust", "--keep-above", 0.5, "--no-progress")
    for name in ("particles_scored.star", "particles_kept.star", "robust_weights.png"):
        assert (out / name).is_file(), name
    import json

    info = json.loads((out / "run.json").read_text())
    assert 0.1 < info["robust"]["fraction_down_weighted"] < 0.4
    scored = read_particles(out / "particles_scored.star").extra_columns
    assert {"rlnCryogradWeight", "rlnCryogradScore", "rlnCryogradJunk"} <= set(scored.columns)
    w = scored["rlnCryogradWeight"].to_numpy(dtype=float)
    assert np.all((w >= 0) & (w <= 1))
    kept = read_particles(out / "particles_kept.star").extra_columns
    assert len(kept) == int(np.sum(w > 0.5))
    # the weights feed a later run
    out2 = tmp_path / "w"
    _cli("reconstruct", out / "particles_scored.star", "-o", out2,
         "--weight-column", "rlnCryogradWeight", "--no-progress")  # fmt: skip
    assert (out2 / "map.mrc").is_file()


@pytest.mark.parametrize(
    "extra",
    [
        ["--robust", "--keep-above", "1.5"],
        ["--robust", "--keep-above", "-0.1"],
        ["--weight-column", "rlnCryogradJunkKind"],
        ["--weight-column", "rlnNoSuchColumn"],
        ["--robust", "--robust-rounds", "0"],
        ["--robust", "--robust-rounds", "two"],
    ],
)
def test_bad_reconstruct_options(junk_set, tmp_path, extra):
    out = tmp_path / "bad"
    proc = _cli("reconstruct", junk_set / "junk" / "particles.star", "-o", out, *extra, check=False)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.startswith("cryograd: error:")]
    assert len(lines) == 1
    assert any(opt in lines[0] for opt in ("--keep-above", "--weight-column", "--robust-rounds"))
    assert not out.exists()


@pytest.mark.parametrize(
    "extra",
    [["--junk", "1.0"], ["--junk", "-0.1"], ["--junk", "0.2", "--junk-kind", "other"]],
)
def test_bad_simulate_options(junk_set, tmp_path, extra):
    out = tmp_path / "bad"
    proc = _cli("simulate", junk_set / "a.mrc", "-n", 10, "-o", out, *extra, check=False)
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.startswith("cryograd: error:")]
    assert len(lines) == 1 and "--junk" in lines[0]
    assert not out.exists()
