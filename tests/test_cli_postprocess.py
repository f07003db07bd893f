"""End-to-end tests of `cryograd postprocess`: outputs, and one-line errors that write nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryograd.cli.main import main
from cryograd.io.mrc import read_map, write_map


def _radius(n: int) -> np.ndarray:
    c = np.arange(n) - n // 2
    return np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)


@pytest.fixture
def halves(tmp_path):
    n, apix = 32, 2.0
    rng = np.random.default_rng(0)
    r = _radius(n)
    k = np.fft.fftfreq(n) * n
    kr = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    blob = np.fft.ifftn(np.fft.fftn(rng.standard_normal((n,) * 3)) * np.exp(-((kr / 7) ** 2)))
    signal = 30 * blob.real * (r < 10)
    paths = {}
    for name, data in (
        ("h1", signal + 0.3 * rng.standard_normal((n,) * 3)),
        ("h2", signal + 0.3 * rng.standard_normal((n,) * 3)),
        ("mask", np.clip((14 - r) / 3, 0, 1)),
    ):
        paths[name] = write_map(tmp_path / f"{name}.mrc", data.astype(np.float32), apix)
    return paths


def _run(args, capsys):
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr()


def test_postprocess_writes_outputs(halves, tmp_path, capsys):
    out = tmp_path / "pp"
    rc, cap = _run(
        [
            "postprocess",
            halves["h1"],
            halves["h2"],
            "-o",
            out,
            "--auto-mask",
            "--threshold",
            "0.5",
            "--locres",
            "--locres-sampling",
            "16",
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 0, cap.err
    for name in (
        "postprocess.mrc",
        "postprocess_masked.mrc",
        "mask.mrc",
        "locres.mrc",
        "locres_filtered.mrc",
        "postprocess.json",
        "fsc.csv",
        "fsc.png",
        "guinier.png",
        "locres_histogram.png",
    ):
        assert (out / name).is_file(), name
    info = json.loads((out / "postprocess.json").read_text())
    assert info["resolution_angstrom"] >= 4.0  # 2 x pixel at best
    assert info["bfactor_a2"] < 0
    assert len(info["fsc"]["fsc_corrected"]) == 17
    m = read_map(out / "mask.mrc").data
    assert m.min() >= 0 and m.max() == 1
    # a given B-factor is used as given; refuses to overwrite without --force
    rc, cap = _run(
        ["postprocess", halves["h1"], halves["h2"], "-o", out, "--bfactor", "-50"], capsys
    )
    assert rc == 2 and "--force" in cap.err
    rc, _ = _run(
        [
            "postprocess",
            halves["h1"],
            halves["h2"],
            "-o",
            out,
            "--bfactor",
            "-50",
            "--force",
            "--mask",
            halves["mask"],
            "--low-pass",
            "0",
            "--force-mask",
        ],
        capsys,
    )
    assert rc == 0
    assert json.loads((out / "postprocess.json").read_text())["bfactor_a2"] == -50.0


def _bad_inputs(tmp_path, halves):
    n = 32
    other_box = write_map(tmp_path / "box24.mrc", np.zeros((24,) * 3, np.float32), 2.0)
    other_pix = write_map(tmp_path / "pix3.mrc", read_map(halves["h2"]).data, 3.0)
    bad_mask = write_map(tmp_path / "badmask.mrc", np.full((n,) * 3, 1.5, np.float32), 2.0)
    corrupt = tmp_path / "corrupt.mrc"
    corrupt.write_bytes(b"not an mrc file" * 10)
    mtf = tmp_path / "mtf.star"
    mtf.write_text("data_\nloop_\n_rlnSomethingElse #1\n0.1\n")
    h1, h2 = halves["h1"], halves["h2"]
    return [
        ([tmp_path / "missing.mrc", h2], "missing.mrc"),
        ([corrupt, h2], "corrupt.mrc"),
        ([h1, other_box], "box24.mrc"),
        ([h1, other_pix], "pix3.mrc"),
        ([h1, h2, "--mask", other_box], "box24.mrc"),
        ([h1, h2, "--mask", bad_mask], "badmask.mrc"),
        ([h1, h2, "--mtf", mtf], "mtf.star"),
        ([h1, h2, "--mtf", tmp_path / "nope.star"], "nope.star"),
        ([h1, h2, "--auto-mask", "--threshold", "1e9"], "--threshold"),
        ([h1, h2, "--auto-mask"], "--threshold"),
        ([h1, h2, "--bfactor", "sharp"], "--bfactor"),
        ([h1, h2, "--low-pass", "nan"], "--low-pass"),
        ([h1, h2, "--seed", "-1"], "--seed"),
    ]


def test_bad_input_is_one_line_and_writes_nothing(halves, tmp_path, capsys):
    for args, name in _bad_inputs(tmp_path, halves):
        out = tmp_path / "out"
        rc, cap = _run(["postprocess", *args, "-o", out], capsys)
        assert rc == 2, (args, cap.err)
        lines = cap.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cryograd: error:"), cap.err
        assert name in lines[0], (name, lines[0])
        assert not out.exists(), args
