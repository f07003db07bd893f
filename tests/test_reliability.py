"""Issue 15: no silent wrong map, no traceback, no half-written folder, no lost run.

Each test is one measured failure: bad pixels and metadata are refused (or skipped), a full disk /
unwritable folder / file size limit gives one line and leaves nothing, the output folder is locked,
a kill never leaves a map without its run.json, --resume checks its fingerprint and continues CG,
and distributed ranks never outlive their launcher.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cryograd.distributed import warn_oversubscription
from cryograd.io.mrc import read_map
from cryograd.io.outdir import folder_lock, lock_path
from tests._tiny_set import (
    PY,
    assert_one_error_line,
    env_here,
    images,
    leftovers,
    rows,
    run_main,
    write_set,
    write_volume,
)

FAST = ["--no-progress", "--device", "cpu"]


@pytest.fixture
def good(tmp_path) -> Path:
    return write_set(tmp_path / "data")


# -- wrong answers that used to exit 0 ---------------------------------------------------------


@pytest.mark.parametrize("method", ["direct", "cg", "adam"])
def test_one_nan_pixel_is_refused_naming_file_and_particle(tmp_path, capsys, method):
    stack = images()
    stack[7, 3, 4] = np.nan
    star = write_set(tmp_path / "data", stack=stack)
    out = tmp_path / "run"
    argv = ["reconstruct", star, "-o", out, "--method", method, "--epochs", "1", *FAST]
    code, _, err = run_main(argv, capsys)
    assert code == 2
    line = assert_one_error_line(err, ("stack.mrcs",))
    assert "image 8" in line and "particle 8" in line and "NaN" in line
    assert "--skip-bad-particles" in line
    assert leftovers(out) == []


def test_skip_bad_particles_drops_and_counts_them(tmp_path, capsys, caplog):
    stack = images()
    stack[3, 0, 0] = np.inf
    stack[10] = 0.0
    star = write_set(tmp_path / "data", stack=stack)
    out = tmp_path / "run"
    code, _, err = run_main(["reconstruct", star, "-o", out, "--skip-bad-particles", *FAST], capsys)
    assert code == 0, err
    info = json.loads((out / "run.json").read_text())
    assert info["particles"] == 22
    assert np.isfinite(read_map(out / "map.mrc").data).all()
    assert "leaving out 1 particles" in caplog.text


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda s: s * 0, "empty or constant"),
        (lambda s: s.__setitem__((5, 2, 2), 1e30) or s, "noise level"),
    ],
    ids=["all-zero-stack", "pixel-1e30"],
)
def test_empty_stack_and_huge_pixel_are_refused(tmp_path, capsys, mutate, words):
    star = write_set(tmp_path / "data", stack=mutate(images()))
    out = tmp_path / "run"
    code, _, err = run_main(["reconstruct", star, "-o", out, *FAST], capsys)
    assert code == 2 and words in assert_one_error_line(err, ("stack.mrcs",))
    assert leftovers(out) == []


def test_same_images_in_both_halves_are_refused(tmp_path, capsys):
    half = rows(12)
    twice = [r[:10] + ["1", "1.0"] for r in half] + [r[:10] + ["2", "1.0"] for r in half]
    star = write_set(tmp_path / "data", particle_rows=twice)
    out = tmp_path / "run"
    code, _, err = run_main(["reconstruct", star, "-o", out, *FAST], capsys)
    line = assert_one_error_line(err, ("particles.star",))
    assert code == 2 and "both half sets" in line and "12 images" in line
    assert leftovers(out) == []


def test_defocus_in_micrometres_and_negative_ctf_scale_are_refused(tmp_path, capsys):
    r = rows()
    for row in r:
        row[6], row[7] = "1.5", "1.4"
    star = write_set(tmp_path / "um", particle_rows=r)
    code, _, err = run_main(["reconstruct", star, "-o", tmp_path / "a", *FAST], capsys)
    assert code == 2 and "look like µm" in assert_one_error_line(err, ("particles.star",))
    r = rows()
    r[4][11] = "-1.0"
    star = write_set(tmp_path / "neg", particle_rows=r)
    code, _, err = run_main(["reconstruct", star, "-o", tmp_path / "b", *FAST], capsys)
    line = assert_one_error_line(err, ("particles.star",))
    assert code == 2 and "row 5" in line and "rlnCtfScalefactor" in line


# -- tracebacks and half-written output --------------------------------------------------------


def test_disk_full_while_saving_gives_one_line_and_leaves_nothing(
    good, tmp_path, capsys, monkeypatch
):
    real = os.replace

    def full(src, dst, *a, **k):
        if str(dst).endswith("half2.mrc"):
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", full)
    out = tmp_path / "run"
    code, _, err = run_main(["reconstruct", good, "-o", out, *FAST], capsys)
    line = assert_one_error_line(err, (str(out),))
    assert code == 2 and "No space left on device" in line and ".stage-" not in line
    assert leftovers(out) == []


def test_simulate_on_a_full_disk_leaves_nothing(tmp_path, capsys, monkeypatch):
    vol = write_volume(tmp_path / "vol.mrc")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "sim"
    code, _, err = run_main(["simulate", vol, "-n", "20", "-o", out], capsys)
    assert code == 2 and "No space" in assert_one_error_line(err, (str(out),))
    assert leftovers(out) == []


def test_simulate_beyond_ulimit_f_is_one_line_not_sigbus(tmp_path):
    vol = write_volume(tmp_path / "vol.mrc")
    out = tmp_path / "sim"
    script = f"ulimit -f 40; exec {PY} -m cryograd simulate {vol} -n 400 -o {out}"
    done = subprocess.run(
        ["bash", "-c", script], env=env_here(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "File too large" in assert_one_error_line(done.stderr)
    assert leftovers(out) == []


def test_unwritable_output_folder_is_one_line_for_every_command(tmp_path):
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv")
    unprivileged = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    probe = subprocess.run(
        [*unprivileged, PY, "-c", "import cryograd"],
        env=env_here(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/tmp",
    )
    if probe.returncode != 0:  # e.g. a checkout under a folder only root may enter
        pytest.skip(f"user nobody cannot import cryograd here: {probe.stderr.strip()[-200:]}")
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        root.chmod(0o755)
        star = write_set(root / "data")
        vol = write_volume(root / "data" / "vol.mrc")
        for p in (root / "data").iterdir():
            p.chmod(0o644)
        (root / "data").chmod(0o755)
        locked = root / "ro"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)
        commands = {
            "reconstruct": ["reconstruct", star, "-o", locked / "run", *FAST],
            "simulate": ["simulate", vol, "-n", "8", "-o", locked / "sim"],
            "project": ["project", vol, star, "-o", locked / "p.mrcs"],
            "fsc": ["fsc", vol, vol, "--csv", locked / "fsc.csv"],
        }
        for name, argv in commands.items():
            done = subprocess.run(
                [
                    "setpriv",
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                    PY,
                    "-m",
                    "cryograd",
                    *map(str, argv),
                ],
                env=env_here(),
                capture_output=True,
                text=True,
                timeout=120,
                cwd=root,
            )
            assert done.returncode == 2, (name, done.stderr[-2000:])
            assert "Permission denied" in assert_one_error_line(done.stderr, (str(locked),))
            assert list(locked.iterdir()) == [], name
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_duplicate_star_column_is_one_line(tmp_path, capsys):
    star = write_set(tmp_path / "data")
    text = star.read_text().replace("_rlnAnglePsi #4\n", "_rlnAnglePsi #4\n_rlnAngleRot #4b\n", 1)
    star.write_text(text.replace("@stack.mrcs ", "@stack.mrcs 0.0 "))
    code, _, err = run_main(["info", star], capsys)
    assert code == 2 and "named twice" in assert_one_error_line(err, ("particles.star",))


def test_bad_numeric_option_and_oversubscription(good, tmp_path, capsys, caplog):
    code, _, err = run_main(["reconstruct", good, "-o", tmp_path / "r", "--tol", "-1"], capsys)
    assert code == 2 and "--tol" in assert_one_error_line(err)
    warn_oversubscription(10_000)
    assert "--nproc 10000 on" in caplog.text or os.environ.get("CUDA_VISIBLE_DEVICES")


# -- runs and processes ------------------------------------------------------------------------


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(good, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            PY,
            "-c",
            "import sys, time\nfrom cryograd.io.outdir import folder_lock\n"
            f"with folder_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)",
        ],
        env=env_here(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, _, err = run_main(["reconstruct", good, "-o", out, "--force", *FAST], capsys)
        assert code == 2 and f"pid {holder.pid}" in assert_one_error_line(err, (str(out),))
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(out).exists()  # left by the killed holder: stale
    code, _, err = run_main(["reconstruct", good, "-o", out, *FAST], capsys)
    assert code == 0, err
    assert not lock_path(out).exists() and (out / "run.json").is_file()
    with folder_lock(out):  # held by this process: a second run here is refused too
        code, _, err = run_main(["reconstruct", good, "-o", out, "--force", *FAST], capsys)
        assert code == 2 and f"pid {os.getpid()}" in err


def test_resume_checks_the_fingerprint(good, tmp_path, capsys):
    out = tmp_path / "run"
    adam = ["--method", "adam", "--epochs", "1", "--init", "zero", "--batch-size", "8", *FAST]
    assert run_main(["reconstruct", good, "-o", out, *adam], capsys)[0] == 0
    record = (out / "run.json").read_text()
    code, _, err = run_main(
        ["reconstruct", good, "-o", out, *adam, "--resume", "--lr", "0.5"], capsys
    )
    assert code == 2 and "--lr 0.5 given" in assert_one_error_line(err, (str(out),))
    other = write_set(tmp_path / "other", particle_rows=rows(seed=9))
    code, _, err = run_main(["reconstruct", other, "-o", out, *adam, "--resume"], capsys)
    assert code == 2 and "particles differ" in assert_one_error_line(err, (str(out),))
    assert (out / "run.json").read_text() == record


def test_cg_checkpoints_its_iterate_and_resume_continues_it(
    good, tmp_path, capsys, monkeypatch, caplog
):
    import cryograd.solvers.cg_checkpoint as cgc

    caplog.set_level(logging.INFO)
    cg = ["--method", "cg", "--tol", "1e-14", "--max-iter", "30", *FAST]
    whole = tmp_path / "whole"
    assert run_main(["reconstruct", good, "-o", whole, *cg], capsys)[0] == 0
    real, saves = cgc._save, []

    def dies(path, state):
        real(path, state)
        saves.append(1)
        if len(saves) == 3:  # half1 at 25 and done at 30, half2 at 25
            raise KeyboardInterrupt

    monkeypatch.setattr(cgc, "_save", dies)
    cut = tmp_path / "cut"
    assert run_main(["reconstruct", good, "-o", cut, *cg], capsys)[0] == 130
    assert (cut / "checkpoint_cg.pt").is_file() and not (cut / "map.mrc").exists()
    monkeypatch.setattr(cgc, "_save", real)
    assert run_main(["reconstruct", good, "-o", cut, *cg, "--resume"], capsys)[0] == 0
    assert "cg half1: taken from the checkpoint" in caplog.text
    assert "cg half2: resuming after iteration 25" in caplog.text
    for name in ("half1.mrc", "half2.mrc", "map.mrc"):  # the same iterates: the same maps
        np.testing.assert_array_equal(read_map(cut / name).data, read_map(whole / name).data)


def test_checkpointed_cg_follows_plain_cg(tmp_path):
    """Checkpointing every 25 iterations does not restart CG: same iterates as without it."""
    import types

    from cryograd.solvers.cg_checkpoint import checkpointed_cg
    from cryograd.solvers.checkpointing import checkpointing
    from cryograd.solvers.krylov import conjugate_gradient

    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=gen, dtype=torch.float64))
    h = q @ torch.diag(torch.logspace(0, 3, 60, dtype=torch.float64)) @ q.T  # CG needs > 25 its

    def op(v: torch.Tensor) -> torch.Tensor:
        return h @ v

    op.preconditioner = None  # type: ignore[attr-defined]
    rhs = torch.randn(60, generator=gen, dtype=torch.float64)
    config = types.SimpleNamespace(tol=1e-12, max_iter=300)
    plain = conjugate_gradient(op, rhs, tol=1e-12, max_iter=300)
    with checkpointing(tmp_path, resume=False):
        saved = checkpointed_cg(op, rhs, config, "half1")
    assert 25 < plain.iterations < 300 and plain.converged
    assert saved.iterations == plain.iterations and saved.residuals == plain.residuals
    torch.testing.assert_close(saved.x, plain.x, rtol=0, atol=0)
    assert torch.linalg.vector_norm(h @ saved.x - rhs) <= 1e-10 * torch.linalg.vector_norm(rhs)


def _complete_or_no_map(out: Path) -> None:
    if not out.exists():
        return
    names = {p.name for p in out.iterdir()}
    if "map.mrc" in names or "run.json" in names:
        assert {"map.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "fsc.png", "run.json"} <= names
        json.loads((out / "run.json").read_text())


def test_kill_9_at_any_moment_never_leaves_a_map_without_run_json(good, tmp_path):
    """Killed at three moments (each run --force over the last one's remains), then a run to the
    end: after every kill the folder holds a complete run or no map at all."""
    argv = [PY, "-m", "cryograd", "reconstruct", str(good), "--method", "cg", *FAST]
    out = tmp_path / "run"
    for delay in (0.0, 0.5, 1.5):
        proc = subprocess.Popen(
            [*argv, "-o", str(out), "--force"],
            env=env_here(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while (
            not (out / "reconstruct.log").exists()
            and proc.poll() is None
            and time.time() < deadline
        ):
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _complete_or_no_map(out)
    done = subprocess.run(
        [*argv, "-o", str(out), "--force"],
        env=env_here(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _complete_or_no_map(out)
    assert (out / "run.json").is_file()
    assert [n for n in leftovers(out) if n != out.name] == []


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_ranks_exit_when_the_launcher_is_killed(good, tmp_path):
    out = tmp_path / "run"
    argv = [
        PY,
        "-m",
        "cryograd",
        "reconstruct",
        str(good),
        "-o",
        str(out),
        "--nproc",
        "2",
        "--method",
        "adam",
        "--epochs",
        "200",
        "--patience",
        "200",
        "--init",
        "zero",
        *FAST,
    ]
    launcher = subprocess.Popen(
        argv, env=env_here(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 90
    while not (out / "rank1.log").exists() and time.time() < deadline:
        time.sleep(0.1)
    ranks = _children(launcher.pid)
    assert len(ranks) == 2, ranks
    launcher.kill()
    launcher.wait()
    deadline = time.time() + 20
    while any(_alive(r) for r in ranks) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(r) for r in ranks)
