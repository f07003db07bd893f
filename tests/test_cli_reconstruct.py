"""``cryograd reconstruct`` and ``cryograd demo`` end to end: outputs, refusals, kill + resume."""

from __future__ import annotations

import argparse
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
from cryograd.simulation import simulate
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
    for name in (
        "map.mrc",
        "half1.mrc",
        "half2.mrc",
        "fsc.csv",
        "fsc.png",
        "run.json",
        "reconstruct.log",
    ):
        assert (out / name).is_file(), name
    info = json.loads((out / "run.json").read_text())
    assert info["particles"] == 600 and info["method"] == "direct"
    assert info["resolution_143_angstrom"] > 0 and "versions" in info
    assert _read(out / "map.mrc").shape == (32, 32, 32)
    # a second run into the same folder is refused, then allowed with --force
    assert main(["reconstruct", str(star), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (
        main(
            [
                "reconstruct",
                str(star),
                "-o",
                str(out),
                "--force",
                "--no-progress",
                "--method",
                "cg",
                "--first",
                "300",
            ]
        )
        == 0
    )
    assert json.loads((out / "run.json").read_text())["method"] == "cg"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--val-fraction", "0.6", "--method", "adam"], "val-fraction"),
        (["--mask", "MASK"], "mask box"),
        (["--mask", "MASK2"], "within [0, 1]"),
        (["--mask", "NOMASK"], "mask file not found"),
        (["--sym", "X5"], "X5"),
        (["--snr", "0"], "--snr"),
        (["--first", "100000", "--class", "3"], "rlnClassNumber"),
        (["--method", "adam", "--loss", "sorted-l1", "--sorted-l1-q", "2"], "--sorted-l1-q"),
    ],
)
def test_bad_options_exit_2_and_leave_nothing(star, tmp_path, capsys, extra, message):
    """Bad input: one ``cryograd: error:`` line, exit 2, and no output folder left behind."""
    if "MASK" in extra or "MASK2" in extra:
        mask = tmp_path / "mask.mrc"
        data = np.ones((16, 16, 16) if "MASK" in extra else (32, 32, 32), dtype=np.float32)
        data[0, 0, 0] = 1.5
        with mrcfile.new(mask) as m:
            m.set_data(data)
        extra = [str(mask) if e in ("MASK", "MASK2") else e for e in extra]
    extra = [str(tmp_path / "none.mrc") if e == "NOMASK" else e for e in extra]
    out = tmp_path / "o"
    code = main(["reconstruct", str(star), "-o", str(out), "--no-progress", *extra])
    assert code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("cryograd: error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert not out.exists()


def test_bad_input_into_an_existing_folder_leaves_it_as_it_was(star, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert main(["reconstruct", str(tmp_path / "missing.star"), "-o", str(out)]) == 2
    assert "missing.star" in capsys.readouterr().err
    assert main(["reconstruct", str(star), "-o", str(out), "--sym", "Q2"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # a previous run is not deleted by --force when the new input is bad
    assert main(["reconstruct", str(star), "-o", str(out), "--no-progress", "--first", "100"]) == 0
    kept = sorted(p.name for p in out.iterdir())
    assert main(["reconstruct", str(star), "-o", str(out), "--force", "--class", "7"]) == 2
    assert "rlnClassNumber" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == kept and "map.mrc" in kept


def test_outputs_have_the_mode_of_the_maps(star, tmp_path):
    out = tmp_path / "modes"
    argv = [
        "reconstruct",
        str(star),
        "-o",
        str(out),
        "--no-progress",
        "--method",
        "adam",
        "--epochs",
        "1",
        "--first",
        "200",
        "--batch-size",
        "50",
    ]
    assert main(argv) == 0
    mode = (out / "map.mrc").stat().st_mode & 0o777
    names = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert {"fsc.csv", "fsc.png", "loss.png", "run.json", "checkpoint_half1.pt"} <= set(names)
    assert all(m == mode for m in names.values()), {k: oct(v) for k, v in names.items()}
    json.loads((out / "run.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_adam_killed_mid_run_resumes_to_the_uninterrupted_result(star, tmp_path):
    """SIGKILL during an epoch, then ``--resume``: the half maps equal an uninterrupted run's."""
    base = [
        sys.executable,
        "-m",
        "cryograd",
        "reconstruct",
        str(star),
        "--method",
        "adam",
        "--epochs",
        "4",
        "--batch-size",
        "16",
        "--init",
        "zero",
        "--seed",
        "5",
        "--patience",
        "10",
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    whole = tmp_path / "whole"
    subprocess.run([*base, "-o", str(whole)], check=True, env=env, capture_output=True, timeout=600)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [*base, "-o", str(cut)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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
    subprocess.run(
        [*base, "-o", str(cut), "--resume"], check=True, env=env, capture_output=True, timeout=600
    )
    for name in ("half1.mrc", "half2.mrc"):
        a, b = _read(whole / name), _read(cut / name)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_demo_runs_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "-n", "300", "--epochs", "1", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "direct" in table and "adam" in table
    assert (out / "direct" / "map.mrc").is_file() and (out / "adam" / "loss.png").is_file()


def test_library_parameters_become_flags_and_choices_come_from_the_registries():
    """The CLI names its flags in library errors (which name parameters), and its choices of
    ``--method``, ``--loss``, ``--penalty`` are the registries'."""
    from cryograd.cli import reconstruct as cli
    from cryograd.cli.main import build_parser
    from cryograd.solvers import LOSSES, PENALTIES, SOLVERS

    cases = {
        "val_fraction must be in (0, 0.5), got 0.6": "--val-fraction must be in (0, 0.5), got 0.6",
        "sorted_l1_q must be in (0, 1), got 2.0": "--sorted-l1-q must be in (0, 1), got 2.0",
        "p.star: class_number=3 given but there is no rlnClassNumber column": (
            "p.star: --class 3 given but there is no rlnClassNumber column"
        ),
        "x: no CTF; use use_ctf=False to reconstruct": "x: no CTF; use --no-ctf to reconstruct",
        "box 16 with method=direct pad=2 needs about 1.0 GiB; try pad=1, a smaller batch_size, "
        "or device='cpu'": "box 16 with --method direct --pad 2 needs about 1.0 GiB; try --pad 1,"
        " a smaller --batch-size, or --device cpu",
        "mask: mask values must lie within [0, 1]": "mask: mask values must lie within [0, 1]",
    }
    for library, flags in cases.items():
        assert cli.flag_message(library) == flags
        assert cli.flag_message(flags) == flags  # already in flags: unchanged
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    rec = sub.choices["reconstruct"]
    choices = {a.dest: a.choices for a in rec._actions if a.choices}
    assert list(choices["method"]) == list(SOLVERS) == ["direct", "cg", "adam", "sgd"]
    assert list(choices["loss"]) == list(LOSSES)
    assert list(choices["penalty"]) == list(PENALTIES)
    assert set(cli.OUTPUT_NAMES) >= {"map.mrc", "run.json", "reconstruct.log", "loss.png"}
