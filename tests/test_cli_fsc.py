"""End-to-end tests of `cryograd fsc`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryograd.cli.main import main
from cryograd.io.mrc import read_map, write_map
from cryograd.validation import compute_fsc_result


def _radius(n: int) -> np.ndarray:
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.sqrt(x**2 + y**2 + z**2)


@pytest.fixture
def half_maps(tmp_path):
    n = 32
    rng = np.random.default_rng(0)
    r = _radius(n)
    signal = np.fft.ifftn(np.fft.fftn(rng.standard_normal((n, n, n))) * np.exp(-((r / 6) ** 2)))
    signal = np.fft.fftshift(signal.real) * 20 * (r < 12)
    a = signal + 0.3 * rng.standard_normal((n, n, n))
    b = signal + 0.3 * rng.standard_normal((n, n, n))
    mask = np.clip((15 - r) / 3, 0, 1)
    paths = {}
    for name, data in (("a", a), ("b", b), ("mask", mask)):
        paths[name] = write_map(tmp_path / f"{name}.mrc", data.astype(np.float32), 2.0)
    return paths


def test_fsc_prints_resolutions(half_maps, capsys):
    assert main(["fsc", str(half_maps["a"]), str(half_maps["b"])]) == 0
    out = capsys.readouterr().out
    assert "resolution at FSC 0.143:" in out and "resolution at FSC 0.5:" in out


def test_fsc_json_matches_library_and_writes_files(half_maps, tmp_path, capsys):
    plot, table = tmp_path / "fsc.png", tmp_path / "fsc.csv"
    argv = ["fsc", str(half_maps["a"]), str(half_maps["b"]), "--mask", str(half_maps["mask"])]
    argv += ["--plot", str(plot), "--csv", str(table), "--json"]
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    a, b, m = (read_map(half_maps[k]).data.astype(np.float64) for k in ("a", "b", "mask"))
    ref = compute_fsc_result(
        torch.from_numpy(a), torch.from_numpy(b), 2.0, mask=torch.from_numpy(m)
    )
    assert got["box_size"] == 32 and got["pixel_size_angstrom"] == pytest.approx(2.0)
    assert got["resolution_143_angstrom"] == pytest.approx(ref.resolution_143_angstrom)
    assert got["resolution_05_angstrom"] == pytest.approx(ref.resolution_05_angstrom)
    assert len(got["fsc_corrected"]) == 17
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert table.read_text().splitlines()[0].startswith("shell,")


def test_fsc_identical_maps_is_nyquist(half_maps, capsys):
    assert main(["fsc", str(half_maps["a"]), str(half_maps["a"]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["resolution_143_angstrom"] == pytest.approx(4.0)  # 2 × 2 Å
    assert np.allclose(got["fsc_unmasked"], 1.0)


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cryograd: error:") and err.count("\n") == 1
    return err


def test_fsc_errors(half_maps, tmp_path, capsys):
    other = write_map(tmp_path / "other.mrc", np.zeros((24, 24, 24), np.float32), 2.0)
    err = _error(["fsc", str(half_maps["a"]), str(other)], capsys)
    assert "other.mrc" in err and "box" in err
    err = _error(["fsc", str(half_maps["a"]), str(tmp_path / "missing.mrc")], capsys)
    assert "missing.mrc" in err
    err = _error(["fsc", str(half_maps["a"]), str(half_maps["b"]), "--mask", str(other)], capsys)
    assert "other.mrc" in err and "mask" in err
    apix = write_map(tmp_path / "apix.mrc", np.zeros((32, 32, 32), np.float32), 3.0)
    err = _error(["fsc", str(half_maps["a"]), str(apix)], capsys)
    assert "voxel size" in err
    assert main(["fsc", str(half_maps["a"]), str(apix), "--angpix", "2"]) == 0
    flat = write_map(tmp_path / "img.mrc", np.zeros((32, 32), np.float32), 2.0)
    err = _error(["fsc", str(flat), str(half_maps["a"])], capsys)
    assert "img.mrc" in err
