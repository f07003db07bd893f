"""``cryograd reconstruct`` and ``cryograd demo`` end to end: outputs, refusals, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryograd.cli.main import main
from cryograd.simulate import simulate
from tests._recon_data import small_map


@pytest.fixture(scope="module")
def star(tmp_path_factory) -> Path:
    vol, px = small_map(32)
    out = tmp_path_factory.mktemp("sim")
    res = simulate(vol, 600, pixel_size=px, snr=0.2, seed=3, out_dir=out, progress=False)
    return res.star_path


def _read(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float64)


def test_reconstruct_writes_outputs_and_refuses_to_overwrite(star, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["reconstruct", str(star), "-o", str(out), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert "resolution" in summary and "Å" in summary
    for name in ("map.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "fsc.png", "run.json",
                 "reconstruct.log"):
        assert (out / name).is_file(), name
    info = json.loads((out / "run.json").read_text())
    assert info["particles"] == 600 and info["method"] == "direct"
    assert info["resolution_143_angstrom"] > 0 and "versions" in info
    assert _read(out / "map.mrc").shape == (32, 32, 32)
    # a second run into the same folder is refused, then allowed with --force
    assert main(["reconstruct", str(star), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["reconstruct", str(star), "-o", str(out), "--force", "--no-progress",
                 "--method", "cg", "--first", "300"]) == 0
    assert json.loads((out / "run.json").read_text())["method"] == "cg"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--val-fraction", "0.6", "--method", "adam"], "val-fraction"),
        (["--mask", "MASK"], "mask box"),
        (["--sym", "X5"], "X5"),
    ],
)
def test_bad_options_exit_2(star, tmp_path, capsys, extra, message):
    if "MASK" in extra:
        mask = tmp_path / "mask.mrc"
        with mrcfile.new(mask) as m:
            m.set_data(np.ones((16, 16, 16), dtype=np.float32))
        extra = [str(mask) if e == "MASK" else e for e in extra]
    code = main(["reconstruct", str(star), "-o", str(tmp_path / "o"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_adam_killed_mid_run_resumes_to_the_uninterrupted_result(star, tmp_path):
    """SIGKILL during an epoch, then ``--resume``: the half maps equal an uninterrupted run's."""
    base = [sys.executable, "-m", "cryograd", "reconstruct", str(star), "--method", "adam",
            "--epochs", "4", "--batch-size", "16", "--init", "zero", "--seed", "5",
            "--patience", "10", "--device", "cpu", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    whole = tmp_path / "whole"
    subprocess.run([*base, "-o", str(whole)], check=True, env=env, capture_output=True,
                   timeout=600)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*base, "-o", str(cut)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = cut / "checkpoint_half1.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=False)
            if state["epoch"] >= 1:
                time.sleep(0.3)  # into the next epoch
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "map.mrc").exists()
    subprocess.run([*base, "-o", str(cut), "--resume"], check=True, env=env,
                   capture_output=True, timeout=600)
    for name in ("half1.mrc", "half2.mrc"):
        a, b = _read(whole / name), _read(cut / name)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_demo_runs_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "-n", "300", "--epochs", "1", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "direct" in table and "adam" in table
    assert (out / "direct" / "map.mrc").is_file() and (out / "adam" / "loss.png").is_file()
