"""Tests of ``cryograd.simulate`` and the ``simulate`` / ``project`` commands."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import torch

from cryograd.cli.main import main
from cryograd.errors import CryogradError
from cryograd.forward import ForwardModel
from cryograd.io.mrc import read_map, write_map
from cryograd.io.registry import read_particles
from cryograd.simulation import (
    SimulationOptions,
    default_stack_size,
    random_rotations,
    simulate,
)
from tests.conftest import shared_file


def _blob_volume(n: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = np.zeros((n, n, n))
    for centre in rng.uniform(-n / 5, n / 5, size=(8, 3)):
        vol += np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / 4.0)
    return vol.astype(np.float32)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "set"
    vol = _blob_volume()
    result = simulate(
        vol,
        13,
        2.0,
        snr=0.5,
        defocus_range_um=(1.0, 2.0),
        shift_max_px=3.0,
        seed=7,
        projector="fourier",
        out_dir=out,
        batch_size=4,
        images_per_stack=5,
        progress=False,
    )
    return vol, result


def test_writes_stacks_star_and_map(simulated):
    vol, result = simulated
    out = result.star_path.parent
    assert [p.name for p in result.stack_paths] == [
        "particles_001.mrcs",
        "particles_002.mrcs",
        "particles_003.mrcs",
    ]
    counts = [mrcfile.open(p).data.shape[0] for p in result.stack_paths]
    assert counts == [5, 5, 3]
    gt = read_map(out / "ground_truth.mrc")
    np.testing.assert_array_equal(gt.data, vol)
    assert gt.voxel_size_angstrom == pytest.approx(2.0)
    assert not list(out.glob(".*tmp*"))


def test_read_back_gives_parameters_written(simulated):
    _, result = simulated
    written = result.particles
    ps = read_particles(result.star_path)
    assert len(ps) == 13 and ps.box_size == 24
    assert ps.pixel_size_angstrom == pytest.approx(2.0)
    np.testing.assert_allclose(ps.rotations, written.rotations, atol=1e-6)
    np.testing.assert_allclose(ps.shifts_px, written.shifts_px, atol=1e-6)
    np.testing.assert_allclose(ps.ctf, written.ctf, rtol=1e-7)
    np.testing.assert_array_equal(ps.half_set, (np.arange(13) % 2) + 1)
    assert np.all(np.abs(ps.shifts_px) <= 3.0)
    mean_defocus = (ps.ctf[:, 0] + ps.ctf[:, 1]) / 2
    assert np.all((mean_defocus >= 1e4) & (mean_defocus <= 2e4))
    assert np.all(ps.ctf[:, 0] >= ps.ctf[:, 1])
    np.testing.assert_allclose(ps.ctf[:, 3:6], np.tile([300.0, 2.7, 0.1], (13, 1)))


def test_measured_snr_matches_request(simulated):
    """Noise = written image − clean projection at the read-back parameters; SNR within 10 %."""
    vol, result = simulated
    ps = read_particles(result.star_path)
    images = torch.from_numpy(ps.images(np.arange(13)).astype(np.float64))
    model = ForwardModel(24, 2.0, "fourier")
    clean = model.project(
        torch.from_numpy(vol).double(),
        torch.from_numpy(ps.rotations),
        torch.from_numpy(ps.shifts_px),
        ps.ctf_params(dtype=torch.float64),
    )
    noise = images - clean
    snr = float(clean.var() / noise.var())
    assert snr == pytest.approx(0.5, rel=0.1)
    # The noise is white: its spectrum is flat (high and low halves of the band agree).
    power = torch.fft.rfft2(noise).abs() ** 2
    assert float(power[:, :6, :6].mean() / power[:, 6:12, 6:12].mean()) == pytest.approx(1, abs=0.2)


def test_random_rotations_uniform():
    rot = random_rotations(20000, np.random.default_rng(0))
    np.testing.assert_allclose(
        rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)
    # Haar measure: E[R] = 0 and E[R_ij²] = 1/3.
    assert np.abs(rot.mean(0)).max() < 0.02
    np.testing.assert_allclose((rot**2).mean(0), 1 / 3, atol=0.02)


def test_default_stack_size_caps_bytes():
    """10000 images per stack, fewer when a float32 stack would exceed 512 MiB."""
    assert default_stack_size(64) == 10000
    assert default_stack_size(256) == 2048  # 2048 · 256² · 4 B = 512 MiB
    assert default_stack_size(400) * 400 * 400 * 4 <= 512 * 2**20
    assert (default_stack_size(400) + 1) * 400 * 400 * 4 > 512 * 2**20
    assert default_stack_size(20000) == 1


def test_same_seed_same_set(tmp_path):
    vol = _blob_volume(12)
    a = simulate(vol, 4, 1.0, snr=1.0, seed=3, out_dir=tmp_path / "a", progress=False)
    b = simulate(vol, 4, 1.0, snr=1.0, seed=3, out_dir=tmp_path / "b", progress=False)
    np.testing.assert_array_equal(
        mrcfile.open(a.stack_paths[0]).data, mrcfile.open(b.stack_paths[0]).data
    )


def test_options_object_same_as_keywords(tmp_path):
    vol = _blob_volume(12)
    a = simulate(vol, 4, 1.0, snr=1.0, seed=3, out_dir=tmp_path / "a", progress=False)
    options = SimulationOptions(snr=1.0, seed=3, progress=False)
    b = simulate(vol, 4, 1.0, out_dir=tmp_path / "b", options=options)
    np.testing.assert_array_equal(
        mrcfile.open(a.stack_paths[0]).data, mrcfile.open(b.stack_paths[0]).data
    )
    np.testing.assert_array_equal(a.particles.rotations, b.particles.rotations)
    with pytest.raises(TypeError):
        simulate(vol, 4, 1.0, out_dir=tmp_path / "c", sn_r=1.0)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n=0),
        dict(snr=-0.1),
        dict(snr=0.0),
        dict(defocus_range_um=(2.0, 1.0)),
        dict(shift_max_px=-1.0),
        dict(projector="nufft"),
    ],
)
def test_bad_parameters_write_nothing(tmp_path, kwargs):
    args = dict(n=3, snr=0.1)
    args.update(kwargs)
    out = tmp_path / "never"
    with pytest.raises(CryogradError):
        simulate(_blob_volume(12), args.pop("n"), 1.0, out_dir=out, progress=False, **args)
    assert not out.exists()


# ---------------------------------------------------------------------------- command line
def _map(path, data, voxel=2.0):
    write_map(path, data, voxel)
    return str(path)


def _run_cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_cli_simulate_and_project(tmp_path, capsys):
    vol = _blob_volume(16)
    mp = _map(tmp_path / "m.mrc", vol)
    code, _ = _run_cli(
        [
            "simulate",
            mp,
            "-n",
            "6",
            "-o",
            str(tmp_path / "s"),
            "--snr",
            "2",
            "--defocus",
            "1.5:2.0",
            "--shift-max",
            "2",
            "--seed",
            "1",
            "--projector",
            "real",
            "--batch-size",
            "4",
        ],
        capsys,
    )
    assert code == 0
    star = tmp_path / "s" / "particles.star"
    ps = read_particles(star)
    assert len(ps) == 6 and ps.box_size == 16
    # project the same map at the simulated parameters, with and without CTF
    out = tmp_path / "p.mrcs"
    assert _run_cli(["project", mp, str(star), "-o", str(out), "--no-ctf"], capsys)[0] == 0
    got = mrcfile.open(out).data
    model = ForwardModel(16, 2.0)
    ref = model.project(
        torch.from_numpy(vol),
        torch.from_numpy(ps.rotations).float(),
        torch.from_numpy(ps.shifts_px).float(),
    )
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5 * float(ref.abs().max()))
    out2 = tmp_path / "p2.mrcs"
    assert (
        _run_cli(["project", mp, str(star), "-o", str(out2), "--projector", "real"], capsys)[0] == 0
    )
    ref2 = ForwardModel(16, 2.0, "real").project(
        torch.from_numpy(vol),
        torch.from_numpy(ps.rotations).float(),
        torch.from_numpy(ps.shifts_px).float(),
        ps.ctf_params(),
    )
    np.testing.assert_allclose(
        mrcfile.open(out2).data, ref2.numpy(), atol=1e-5 * float(ref2.abs().max())
    )


def _ncc(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_cli_project_reproduces_relion(tmp_path, capsys):
    star = shared_file("aspire/rln_proj_65_shifted.star")
    mp = shared_file("aspire/clean70SRibosome_vol_65p.mrc")
    relion = mrcfile.open(shared_file("aspire/rln_proj_65_shifted.mrcs")).data
    out = tmp_path / "p.mrcs"
    # The STAR file says 1 Å/px and the map header has no voxel size.
    code, err = _run_cli(["project", str(mp), str(star), "-o", str(out), "--no-ctf"], capsys)
    assert code == 0, err
    ours = np.roll(mrcfile.open(out).data, (1, 1), axis=(-2, -1))  # RELION's odd-box centre
    assert min(_ncc(o, r) for o, r in zip(ours, relion)) > 0.99


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_cli_bad_input(tmp_path, capsys):
    vol = _blob_volume(16)
    good = _map(tmp_path / "good.mrc", vol)
    assert (
        _run_cli(["simulate", good, "-n", "4", "-o", str(tmp_path / "s"), "--seed", "2"], capsys)[0]
        == 0
    )
    star = str(tmp_path / "s" / "particles.star")
    nonsq = _map(tmp_path / "nonsq.mrc", np.zeros((16, 16, 14), np.float32) + 1)
    nan = vol.copy()
    nan[3, 3, 3] = np.nan
    nanmap = tmp_path / "nan.mrc"
    with mrcfile.new(nanmap) as m:
        m.set_data(nan)
        m.voxel_size = 2.0
    big = _map(tmp_path / "big.mrc", _blob_volume(18))
    wrong_px = _map(tmp_path / "px.mrc", vol, voxel=2.05)
    cases = [
        ["simulate", nonsq, "-n", "3", "-o", str(tmp_path / "o1")],
        ["simulate", str(nanmap), "-n", "3", "-o", str(tmp_path / "o2")],
        ["simulate", good, "-n", "0", "-o", str(tmp_path / "o3")],
        ["simulate", good, "-n", "3", "--snr", "-1", "-o", str(tmp_path / "o4")],
        ["project", nonsq, star, "-o", str(tmp_path / "o5.mrcs")],
        ["project", big, star, "-o", str(tmp_path / "o6.mrcs")],
        ["project", wrong_px, star, "-o", str(tmp_path / "o7.mrcs")],
        ["project", str(nanmap), star, "-o", str(tmp_path / "o8.mrcs")],
    ]
    messages = []
    for argv in cases:
        code, err = _run_cli(argv, capsys)
        messages.append(err.strip())
        assert code == 2, argv
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cryograd: error: "), err
    print("\n".join(messages))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["good.mrc", "s", "nonsq.mrc", "nan.mrc", "big.mrc", "px.mrc"]
    )
