"""``cryograd reconstruct`` on several processes (Gloo on CPU) gives the one-process map.

- 2 and 3 processes reproduce the single-process maps of ``direct``, ``cg`` and ``adam``;
- a rank SIGKILLed during the ``adam`` epochs stops the whole ``--nproc 2`` job with an error naming
  it, leaving no output behind; ``--resume`` on 3 processes then ends with the uninterrupted maps;
- the Slurm variables (set by hand, no torchrun variables) and ``torchrun`` launch the same job;
- bad input stops every rank with one line naming the rank and the cause.

The multi-process runs of the first test start this module as a program (``python -m
tests.test_distributed_reconstruct``) through :func:`cryograd.distributed.spawn`: one process group
reconstructs with the three methods in turn through the CLI's code path, which saves two thirds of
the process start-ups. The other tests run the ``cryograd`` command itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryograd import distributed as cd
from cryograd.cli.main import main
from cryograd.simulation import simulate
from tests._recon_data import small_map
from tests.test_distributed import REPO, _base_env, _free_port_in

RTOL = 1e-5
"""Largest relative difference ``‖a − b‖ / ‖a‖`` allowed between maps (issue 6)."""

COMMON = ["--device", "cpu", "--no-progress", "--seed", "4"]
METHOD_OPTIONS = {
    "direct": [],
    "cg": [],
    # from zero, so that the maps are the optimiser's (from the direct map the best epoch may be 0)
    "adam": ["--init", "zero", "--epochs", "2", "--batch-size", "16"],
}
OUTPUTS = ("map.mrc", "half1.mrc", "half2.mrc", "fsc.csv", "fsc.png", "loss.png", "run.json")


@pytest.fixture(scope="module")
def star(tmp_path_factory) -> Path:
    """300 particles of box 16 with CTF and noise, on disk (``cryograd simulate``'s writer)."""
    vol, px = small_map(16)
    out = tmp_path_factory.mktemp("sim")
    return simulate(vol, 300, pixel_size=px, snr=0.5, seed=3, out_dir=out, progress=False).star_path


@pytest.fixture(scope="module")
def single(star, tmp_path_factory) -> Path:
    """The single-process runs of every method (in this process): ``ROOT/<method>/``."""
    root = tmp_path_factory.mktemp("single")
    for method, options in METHOD_OPTIONS.items():
        argv = ["reconstruct", str(star), "-o", str(root / method), "--method", method]
        assert main([*argv, *COMMON, *options]) == 0
    return root


def _read(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, dtype=np.float64)


def _relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def _assert_same_maps(reference: Path, other: Path, names=("map.mrc", "half1.mrc", "half2.mrc")):
    for name in names:
        diff = _relative_difference(_read(reference / name), _read(other / name))
        print(f"{other.name}/{name}: relative difference {diff:.2e}")  # shown with pytest -s
        assert diff <= RTOL, f"{other / name}: relative difference {diff:.2e} > {RTOL:g}"


def _env(**extra: str) -> dict[str, str]:
    return _base_env(**extra)


def _cryograd(*argv: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "cryograd", *argv],
        env=env or _env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------------------------------
# 2 and 3 processes equal one
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nproc", [2, 3])
def test_processes_give_the_single_process_maps(star, single, tmp_path, nproc):
    code = cd.spawn(
        nproc,
        [str(star), str(tmp_path)],
        command=[sys.executable, "-m", "tests.test_distributed_reconstruct"],
        env=_env(),
    )
    assert code == 0
    for method in METHOD_OPTIONS:
        out = tmp_path / method
        _assert_same_maps(single / method, out)
        info = json.loads((out / "run.json").read_text())
        assert info["world_size"] == nproc and info["distributed"]["backend"] == "gloo"
        assert info["distributed"]["n_collectives"] > 0
        assert info["particles"] == 300
        # rank 0 wrote everything; the others only their logs
        for rank in range(1, nproc):
            assert f"rank {rank} of {nproc}" in (out / f"rank{rank}.log").read_text()
    adam = json.loads((tmp_path / "adam" / "run.json").read_text())
    assert adam["history"]["half1"]["best_epoch"] > 0  # the optimiser moved the map


# --------------------------------------------------------------------------------------------------
# A rank killed mid-run; --resume on another number of processes
# --------------------------------------------------------------------------------------------------


def test_killed_rank_stops_the_job_and_resume_finishes_it(star, tmp_path):
    adam = ["--method", "adam", "--init", "zero", "--epochs", "3", "--batch-size", "16"]
    argv = [str(star), *adam, *COMMON]
    whole = tmp_path / "whole"
    done = _cryograd("reconstruct", *argv, "-o", str(whole), "--nproc", "2")
    assert done.returncode == 0, done.stderr
    n_collectives = json.loads((whole / "run.json").read_text())["distributed"]["n_collectives"]

    cut = tmp_path / "cut"
    die_at = int(0.75 * n_collectives)  # during the second half map's epochs
    start = time.time()
    done = _cryograd(
        "reconstruct",
        *argv,
        "-o",
        str(cut),
        "--nproc",
        "2",
        env=_env(CRYOGRAD_TEST_DIE_AT=f"1:{die_at}"),
    )
    ended = time.time()
    assert done.returncode != 0
    assert _error_lines(done.stderr) == ["cryograd: error: rank 1 was killed by SIGKILL"], (
        done.stderr
    )
    died = (cut / "rank1.log").stat().st_mtime  # its last line: "killing itself before ..."
    assert "killing itself" in (cut / "rank1.log").read_text()
    assert ended - died < 60, ended - died
    assert ended - start < 120
    left = sorted(p.name for p in cut.iterdir())
    assert not [n for n in left if n in OUTPUTS or ".tmp" in n], left
    assert "checkpoint_half2.pt" in left, left  # half 1 done, half 2 part-way

    done = _cryograd("reconstruct", *argv, "-o", str(cut), "--nproc", "3", "--resume")
    assert done.returncode == 0, done.stderr
    assert "half2: resuming after epoch" in (cut / "reconstruct.log").read_text()
    assert json.loads((cut / "run.json").read_text())["world_size"] == 3
    _assert_same_maps(whole, cut)


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if ln.startswith("cryograd: error:")]


def test_killed_rank_zero_is_one_line_and_leaves_no_map(star, tmp_path):
    """Rank 0 hosts the rendezvous store: its death is one line too, not a C++ stack trace."""
    adam = ["--method", "adam", "--init", "zero", "--epochs", "3", "--batch-size", "16"]
    cut = tmp_path / "cut"
    done = _cryograd(
        "reconstruct",
        str(star),
        *adam,
        *COMMON,
        "-o",
        str(cut),
        "--nproc",
        "2",
        env=_env(CRYOGRAD_TEST_DIE_AT="0:20"),
    )
    assert done.returncode != 0
    assert _error_lines(done.stderr) == ["cryograd: error: rank 0 was killed by SIGKILL"]
    assert "rank 0 failed: lost the rendezvous store" in (cut / "rank1.log").read_text()
    left = sorted(p.name for p in cut.iterdir())
    assert not [n for n in left if n in OUTPUTS or ".tmp" in n], left


def test_job_failure_line_names_the_first_cause():
    line = cd._job_failure_line
    assert (
        line(1, -9, 0, {0: "rank 0 stopping: rank 1 failed: x"}) == "rank 1 was killed by SIGKILL"
    )
    reports = {0: "rank 0 stopping: rank 1 failed: bad mask", 1: "rank 1 failed: bad mask"}
    assert line(1, 2, 0, reports) == "rank 1 failed: bad mask"
    assert line(0, 1, 0, reports) == "rank 1 failed: bad mask"  # the cause, not the echo
    assert line(0, 1, 0, {0: "rank 0 stopping: rank 1 failed: y"}) == "rank 1 failed: y"
    assert line(0, 1, 1, {}) == "rank 0 exited with status 1; stopped the other 1 process(es)"


# --------------------------------------------------------------------------------------------------
# Launchers: Slurm variables by hand, torchrun
# --------------------------------------------------------------------------------------------------


def test_slurm_variables_launch(star, single, tmp_path):
    port = _free_port_in(10000, 30000)
    job_id = 100000 + (port - 10000)  # default port 10000 + id % 20000 == port
    out = tmp_path / "slurm"
    procs = []
    for rank in range(2):
        env = _env(
            SLURM_PROCID=str(rank),
            SLURM_NTASKS="2",
            SLURM_LOCALID=str(rank),
            SLURM_JOB_NODELIST="localhost",
            SLURM_JOB_ID=str(job_id),
        )
        cmd = [sys.executable, "-m", "cryograd", "reconstruct", str(star), "-o", str(out)]
        procs.append(
            subprocess.Popen(
                [*cmd, "--method", "direct", *COMMON],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    _assert_same_maps(single / "direct", out)
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2
    assert "slurm launch" in errs[0]  # rank 0 logs how it joined


def test_torchrun_launch(star, single, tmp_path):
    out = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += [f"--master-port={cd.find_free_port()}", "-m", "cryograd", "reconstruct", str(star)]
    done = subprocess.run(
        [*cmd, "-o", str(out), "--method", "cg", *COMMON],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    _assert_same_maps(single / "cg", out)
    assert json.loads((out / "run.json").read_text())["world_size"] == 2


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_bad_input_stops_every_rank(star, tmp_path):
    out = tmp_path / "bad"
    missing = tmp_path / "no_such_mask.mrc"
    done = _cryograd(
        "reconstruct", str(star), "-o", str(out), "--nproc", "2", "--mask", str(missing), *COMMON
    )
    assert done.returncode == 2, done.stderr
    lines = _error_lines(done.stderr)
    assert len(lines) == 1, done.stderr  # one line for the job, naming the rank and the cause
    assert "failed: " in lines[0] and f"{missing}: mask file not found" in lines[0], lines
    assert not [p.name for p in out.iterdir() if p.name in OUTPUTS or ".tmp" in p.name]
    assert "mask file not found" in (out / "reconstruct.log").read_text()  # rank 0's log


# --------------------------------------------------------------------------------------------------
# The worker program of the first test
# --------------------------------------------------------------------------------------------------


def _worker(star: str, root: Path) -> int:
    """One rank: join the spawned job and reconstruct with every method through the CLI code."""
    from cryograd.cli import reconstruct as cli
    from cryograd.cli.main import build_parser

    comm = cd.init_communicator(timeout_s=60.0, device="cpu")

    def work() -> int:
        for method, options in METHOD_OPTIONS.items():
            argv = ["reconstruct", star, "-o", str(root / method), "--method", method]
            argv += [*COMMON, *options]
            args = build_parser().parse_args(argv)
            args.argv = argv
            cli._run(args, comm)
        return 0

    return cd.run_distributed(work, comm)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    raise SystemExit(_worker(sys.argv[1], Path(sys.argv[2])))
