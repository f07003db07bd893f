"""Tests of cryograd.distributed: Slurm host lists, launch variables, sharding, collectives over 2
and 3 local Gloo processes, and a job that stops as a whole when one rank fails or is killed.

The multi-process tests start this module as a program (``python -m tests.test_distributed MODE``),
with torchrun's or Slurm's variables set by hand; the workers write what they computed to files that
the test checks against sums computed here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cryograd import distributed as cd
from cryograd.errors import CryogradError

REPO = Path(__file__).resolve().parent.parent
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# --------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostlist", "expected"),
    [
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("gpu5", ["gpu5"]),
        ("a,b,c", ["a", "b", "c"]),
        ("n[8-11]", ["n8", "n9", "n10", "n11"]),
        ("n[008-010]", ["n008", "n009", "n010"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("x[3],y[1,4-5]z", ["x3", "y1z", "y4z", "y5z"]),
        ("host-1.example.org,10.0.0.[1-2]", ["host-1.example.org", "10.0.0.1", "10.0.0.2"]),
    ],
)
def test_parse_slurm_hostlist(hostlist, expected):
    assert cd.parse_slurm_hostlist(hostlist) == expected


@pytest.mark.parametrize(
    "bad", ["", "n[1-3", "n1-3]", "n[3-1]", "n[a-b]", "n[1,,2]", "a,,b", "n[]"]
)
def test_parse_slurm_hostlist_rejects_malformed(bad):
    with pytest.raises(ValueError):
        cd.parse_slurm_hostlist(bad)


def test_resolve_launch_env_torchrun():
    env = {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "h0",
        "MASTER_PORT": "1234",
    }
    # torchrun's variables win over Slurm's when both are present.
    env.update(SLURM_PROCID="0", SLURM_NTASKS="8", SLURM_JOB_NODELIST="x[1-2]")
    launch = cd.resolve_launch_env(env)
    assert launch == cd.LaunchEnv(3, 4, 1, "h0", 1234, "torchrun")
    assert cd.resolve_launch_env({}) is None


def test_resolve_launch_env_slurm():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08,11],cpu1",
        "SLURM_JOB_ID": "123456",
    }
    launch = cd.resolve_launch_env(env)
    assert launch == cd.LaunchEnv(5, 8, 1, "gpu07", 10000 + 123456 % 20000, "slurm")
    # MASTER_ADDR and MASTER_PORT override the node list and the job-id port.
    launch = cd.resolve_launch_env({**env, "MASTER_ADDR": "login", "MASTER_PORT": "4321"})
    assert (launch.master_addr, launch.master_port) == ("login", 4321)
    # srun's per-step values come before the job's.
    step = {**env, "SLURM_STEP_NUM_TASKS": "6", "SLURM_STEP_NODELIST": "gpu[08,11]"}
    launch = cd.resolve_launch_env(step)
    assert (launch.world_size, launch.master_addr) == (6, "gpu08")


@pytest.mark.parametrize(
    "env",
    [
        {"RANK": "4", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
        {"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"},
        {"RANK": "x", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
        {"SLURM_PROCID": "2", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n1"},
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n[1-"},
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "2"},
    ],
)
def test_resolve_launch_env_rejects_inconsistent(env):
    with pytest.raises(CryogradError):
        cd.resolve_launch_env(env)


def test_slurm_default_port():
    assert cd.slurm_default_port("42") == 10042
    assert cd.slurm_default_port(20000 * 7 + 5) == 10005
    assert cd.slurm_default_port(None) == 29500
    assert all(10000 <= cd.slurm_default_port(j) < 30000 for j in range(0, 10**6, 9973))


@pytest.mark.parametrize("n", [0, 1, 2, 7, 17, 100])
@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("strided", [False, True])
def test_shard_covers_every_index_once(n, world_size, strided):
    indices = np.random.default_rng(n).permutation(1000)[:n]
    shards = [cd.shard_indices(indices, r, world_size, strided=strided) for r in range(world_size)]
    assert sorted(np.concatenate(shards).tolist()) == sorted(indices.tolist())
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    if not strided:  # contiguous blocks in rank order
        assert np.array_equal(np.concatenate(shards), indices)
    # deterministic
    again = cd.shard_indices(indices, world_size - 1, world_size, strided=strided)
    assert np.array_equal(again, shards[-1])


def test_single_process_is_trivial():
    comm = cd.single_process()
    assert (comm.rank, comm.world_size, comm.local_rank, comm.is_main) == (0, 1, 0, True)
    assert not comm.is_distributed and comm.device == torch.device("cpu")
    x = torch.arange(4.0)
    z = torch.ones(3, dtype=torch.complex64)
    assert comm.all_reduce_sum_(x) is x and torch.equal(x, torch.arange(4.0))
    assert comm.all_reduce_sum_(z) is z
    assert comm.broadcast_(x) is x
    assert comm.all_reduce_sum_scalar(2.5) == 2.5
    assert comm.broadcast_object({"a": 1}) == {"a": 1}
    assert comm.all_gather_object(3) == [3]
    comm.barrier()
    assert np.array_equal(comm.shard(np.arange(5)), np.arange(5))
    comm.close()
    assert cd.run_distributed(lambda a: a + 1, comm, 1) == 2
    with pytest.raises(KeyError):  # one process: exceptions reach the caller as they are
        cd.run_distributed(lambda: {}["x"], comm)


def test_init_communicator_without_launcher_is_single_process(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    comm = cd.init_communicator(device="cpu", environ={})
    assert comm.world_size == 1 and not comm.is_distributed
    with pytest.raises(CryogradError):
        cd.init_communicator(timeout_s=0, environ={})


def test_rendezvous_timeout_is_a_clear_error():
    """Rank 1 of 2 alone: no rank 0 ever comes, the join fails after --timeout with a hint."""
    env = {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(cd.find_free_port()),
    }
    start = time.time()
    with pytest.raises(CryogradError, match="rank 1: could not join the 2-process job"):
        cd.init_communicator(timeout_s=1.5, device="cpu", environ=env)
    assert time.time() - start < 15


def test_resolve_device():
    assert cd.resolve_device("cpu", 3) == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert cd.resolve_device("auto", 0) == expected
    with pytest.raises(CryogradError):
        cd.resolve_device("tpu", 0)
    if not torch.cuda.is_available():
        with pytest.raises(CryogradError):
            cd.resolve_device("cuda", 0)


def test_spawn_needed():
    assert not cd.spawn_needed(1, {})
    assert cd.spawn_needed(2, {})
    launched = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert not cd.spawn_needed(2, launched)  # a spawned process does not spawn again
    assert not cd.spawn_needed(1, launched)
    with pytest.raises(CryogradError):
        cd.spawn_needed(3, launched)
    with pytest.raises(CryogradError):
        cd.spawn_needed(0, {})


def test_setup_rank_logging(tmp_path):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        assert cd.setup_rank_logging(tmp_path, cd.Communicator(0, 2)) is None
        path = cd.setup_rank_logging(tmp_path / "out", cd.Communicator(1, 2))
        assert path == tmp_path / "out" / "rank1.log"
        logging.getLogger("cryograd.test").info("hello from rank one")
        for handler in root.handlers:
            handler.flush()
        assert "rank1 INFO cryograd.test: hello from rank one" in path.read_text()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


# --------------------------------------------------------------------------------------------------
# Several processes (Gloo on CPU)
# --------------------------------------------------------------------------------------------------


def _base_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCH_VARS and not k.startswith(("SLURM_", "TORCHELASTIC_", "CRYOGRAD_"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


WORKER = [sys.executable, "-m", "tests.test_distributed"]


def _launch(world_size: int, mode: str, outdir: Path, **extra: str) -> list[subprocess.Popen]:
    """Start ``world_size`` workers with torchrun's variables set by hand."""
    port = cd.find_free_port()
    procs = []
    for rank in range(world_size):
        env = _base_env(
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            **extra,
        )
        procs.append(
            subprocess.Popen(
                [*WORKER, mode, str(outdir)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _wait_all(
    procs: list[subprocess.Popen], limit_s: float
) -> tuple[list[int], list[float], list[str]]:
    """Wait for every process (kill them all after ``limit_s``): codes, end times, stderr texts."""
    ends: list[float | None] = [None] * len(procs)
    deadline = time.time() + limit_s
    while any(e is None for e in ends) and time.time() < deadline:
        for i, p in enumerate(procs):
            if ends[i] is None and p.poll() is not None:
                ends[i] = time.time()
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.kill()
    errs = [p.communicate()[1] for p in procs]
    hung = [i for i, e in enumerate(ends) if e is None]
    assert not hung, f"ranks {hung} still ran after {limit_s} s; stderr: {errs}"
    return [p.returncode for p in procs], ends, errs  # type: ignore[return-value]


def _check_collectives(outdir: Path, world_size: int, backend_rank: str = "torchrun") -> None:
    """What every worker computed equals sums and copies computed here."""
    n = 17
    shards = []
    for rank in range(world_size):
        got = np.load(outdir / f"rank{rank}.npz")
        meta = json.loads((outdir / f"rank{rank}.json").read_text())
        assert meta["rank"] == rank and meta["world_size"] == world_size
        assert meta["local_rank"] == rank and meta["backend"] == "gloo"
        assert meta["source"] == backend_rank
        real = sum(_real_part(r) for r in range(world_size))
        cplx = sum(_complex_part(r) for r in range(world_size))
        np.testing.assert_array_equal(got["real"], real)
        np.testing.assert_array_equal(got["complex"], cplx)
        expected = sum((_real_part(r) / world_size).astype(np.float32) for r in range(world_size))
        np.testing.assert_allclose(got["strided_view"], expected.T[::2], rtol=1e-6)
        assert got["scalar"] == pytest.approx(sum(0.5 * r + 1 for r in range(world_size)))
        np.testing.assert_array_equal(got["broadcast"], _real_part(world_size - 1))
        assert meta["object"] == {"from": 0, "items": [0, 1]}
        assert meta["gathered"] == [r * r for r in range(world_size)]
        # init barrier, real, complex, strided, scalar, broadcast, object, gather, barrier
        stats = meta["stats"]
        assert stats["n_collectives"] == 9 and stats["comm_time_s"] > 0
        assert stats["comm_bytes"] == 4 + 20 * 8 + 3 * 16 + 12 * 4 + 8 + 20 * 8 + 4
        shards.append(got["shard"])
    assert sorted(np.concatenate(shards).tolist()) == list(range(100, 100 + n))


def _real_part(rank: int) -> np.ndarray:
    return (np.arange(20, dtype=np.float64).reshape(4, 5) + 1) * (rank + 1) ** 2


def _complex_part(rank: int) -> np.ndarray:
    return (np.arange(3) + 1) * (rank + 1) + 1j * (rank - 2.5) * np.arange(3)


def test_collectives_match_sums(tmp_path):
    """3 processes here; 2 in the spawn and Slurm tests below."""
    world_size = 3
    procs = _launch(world_size, "collectives", tmp_path)
    codes, _, errs = _wait_all(procs, 60)
    assert codes == [0] * world_size, errs
    _check_collectives(tmp_path, world_size)
    assert json.loads((tmp_path / "rank0.json").read_text())["hosts_store"]


def test_torchrun_launch(tmp_path):
    """Under torchrun its agent hosts the rendezvous store; every rank is a client."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += [f"--master-port={cd.find_free_port()}", "-m", "tests.test_distributed"]
    done = subprocess.run(
        [*cmd, "collectives", str(tmp_path)],
        env=_base_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    _check_collectives(tmp_path, 2)
    assert not json.loads((tmp_path / "rank0.json").read_text())["hosts_store"]


def _free_port_in(low: int, high: int) -> int:
    """A free port in [low, high) on 127.0.0.1."""
    rng = np.random.default_rng()
    for port in rng.permutation(np.arange(low, high))[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", int(port)))
            except OSError:
                continue
            return int(port)
    pytest.skip("no free port in the Slurm default range")


def test_slurm_variables_form_a_group(tmp_path):
    """2 local processes with only SLURM_* set: address from the node list, port from the job id."""
    port = _free_port_in(10000, 30000)
    job_id = 100000 + (port - 10000)  # 100000 % 20000 == 0, so the default port is `port`
    procs = []
    for rank in range(2):
        env = _base_env(
            SLURM_PROCID=str(rank),
            SLURM_NTASKS="2",
            SLURM_LOCALID=str(rank),
            SLURM_JOB_NODELIST="localhost,node[02-03]",
            SLURM_JOB_ID=str(job_id),
        )
        procs.append(
            subprocess.Popen(
                [*WORKER, "collectives", str(tmp_path)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    codes, _, errs = _wait_all(procs, 60)
    assert codes == [0, 0], errs
    _check_collectives(tmp_path, 2, backend_rank="slurm")


def _kill_time(outdir: Path) -> float:
    return float((outdir / "killed_at").read_text())


@pytest.mark.parametrize("victim", [1, 0])
def test_rank_killed_mid_collective_stops_the_job(tmp_path, victim):
    """SIGKILL of one rank while the others wait in an all-reduce (default timeouts)."""
    procs = _launch(3, f"kill{victim}", tmp_path)
    codes, ends, errs = _wait_all(procs, 90)
    assert codes[victim] == -signal.SIGKILL
    killed_at = _kill_time(tmp_path)
    for rank in range(3):
        if rank == victim:
            continue
        assert codes[rank] != 0, errs[rank]
        assert ends[rank] - killed_at < 60, (ends[rank] - killed_at, errs[rank])
        assert f"rank {victim} failed" in errs[rank], errs[rank]
        assert "cryograd: error: " in errs[rank]


def test_rank_killed_while_others_compute(tmp_path):
    """A silent death noticed by the heartbeat alone (the others are not in a collective)."""
    procs = _launch(3, "kill_idle", tmp_path, CRYOGRAD_HEARTBEAT_TIMEOUT="4")
    codes, ends, errs = _wait_all(procs, 60)
    killed_at = _kill_time(tmp_path)
    assert codes[2] == -signal.SIGKILL
    for rank in (0, 1):
        assert codes[rank] == cd.EXIT_ABORTED, errs[rank]
        assert 3 < ends[rank] - killed_at < 20, ends[rank] - killed_at
        assert "rank 2 failed: no heartbeat" in errs[rank], errs[rank]


def test_exception_on_one_rank_stops_the_job(tmp_path):
    procs = _launch(3, "raise", tmp_path)
    codes, ends, errs = _wait_all(procs, 60)
    assert codes[1] == 2  # CryogradError: bad input
    assert "cryograd: error: rank 1 failed: particles.mrcs: shard unreadable" in errs[1]
    for rank in (0, 2):
        assert codes[rank] == cd.EXIT_ABORTED
        assert "stopping: rank 1 failed: particles.mrcs: shard unreadable" in errs[rank], errs[rank]
    assert max(ends) - min(ends) < 10


def test_hung_rank_times_out(tmp_path):
    """A rank alive but stuck: the others' collective times out (--timeout 6) and all exit."""
    procs = _launch(2, "hang", tmp_path, CRYOGRAD_TEST_TIMEOUT="6")
    codes, ends, errs = _wait_all(procs, 60)
    assert codes == [cd.EXIT_ABORTED, cd.EXIT_ABORTED], errs
    assert "rank 0 failed: collective #" in errs[0], errs[0]
    assert "rank(s) [1] had not reached this collective" in errs[0], errs[0]
    assert "rank 1 stopping: rank 0 failed" in errs[1], errs[1]


def test_spawn_runs_a_job(tmp_path, capfd):
    code = cd.spawn(2, ["collectives", str(tmp_path)], command=WORKER, env=_base_env())
    assert code == 0, capfd.readouterr().err
    _check_collectives(tmp_path, 2)


def test_spawn_propagates_a_failure(tmp_path, capfd):
    start = time.time()
    code = cd.spawn(3, ["kill_idle", str(tmp_path)], command=WORKER, env=_base_env())
    elapsed = time.time() - start
    err = capfd.readouterr().err
    assert code != 0
    assert "cryograd: error: rank 2 was killed by SIGKILL; stopped the other 2 process(es)" in err
    assert elapsed < 60
    assert time.time() - _kill_time(tmp_path) < 15  # the others were stopped at once


def test_spawn_reports_the_failing_rank_not_the_ones_it_stopped(tmp_path, capfd):
    """Bad input on rank 1: its status (2) is the job's, and the ranks print the cause."""
    code = cd.spawn(3, ["raise", str(tmp_path)], command=WORKER, env=_base_env())
    err = capfd.readouterr().err
    assert code == 2, err
    assert "cryograd: error: rank 1 failed: particles.mrcs: shard unreadable" in err
    assert "exited with status" not in err  # no second, vaguer line from the launcher


def test_parse_die_at():
    assert cd._parse_die_at("", 0) is None
    assert cd._parse_die_at("1:7", 1) == 7
    assert cd._parse_die_at(" 1:7 ", 0) is None
    with pytest.raises(CryogradError, match="CRYOGRAD_TEST_DIE_AT"):
        cd._parse_die_at("rank1", 1)


# --------------------------------------------------------------------------------------------------
# The worker program
# --------------------------------------------------------------------------------------------------


def _worker(mode: str, outdir: Path) -> int:
    timeout_s = float(os.environ.get("CRYOGRAD_TEST_TIMEOUT", cd.DEFAULT_TIMEOUT_S))
    comm = cd.init_communicator(timeout_s=timeout_s, device="cpu")
    return cd.run_distributed(_WORKER_MODES[mode.rstrip("0123456789")], comm, comm, mode, outdir)


def _collectives(comm: cd.Communicator, mode: str, outdir: Path) -> int:
    real = torch.from_numpy(_real_part(comm.rank))
    cplx = torch.from_numpy(_complex_part(comm.rank))
    assert comm.all_reduce_sum_(real) is real
    assert comm.all_reduce_sum_(cplx) is cplx
    strided = torch.from_numpy(_real_part(comm.rank) / comm.world_size).float().T[::2]
    comm.all_reduce_sum_(strided)  # a non-contiguous view is summed in place
    scalar = comm.all_reduce_sum_scalar(0.5 * comm.rank + 1)
    bcast = torch.from_numpy(_real_part(comm.rank))
    comm.broadcast_(bcast, src=comm.world_size - 1)
    obj = comm.broadcast_object({"from": comm.rank, "items": [0, 1]} if comm.is_main else None)
    gathered = comm.all_gather_object(comm.rank**2)
    comm.barrier()
    shard = comm.shard(np.arange(100, 117), strided=comm.world_size == 3)
    launch = cd.resolve_launch_env()
    np.savez(
        outdir / f"rank{comm.rank}.npz",
        real=real.numpy(),
        complex=cplx.numpy(),
        strided_view=strided.numpy(),
        scalar=scalar,
        broadcast=bcast.numpy(),
        shard=shard,
    )
    meta = {
        "rank": comm.rank,
        "world_size": comm.world_size,
        "local_rank": comm.local_rank,
        "backend": comm.backend,
        "source": launch.source,
        "object": obj,
        "gathered": gathered,
        "stats": comm.stats(),
        "hosts_store": comm._hosts_store,
    }
    (outdir / f"rank{comm.rank}.json").write_text(json.dumps(meta))
    return 0


def _die(outdir: Path) -> None:
    (outdir / "killed_at").write_text(repr(time.time()))
    os.kill(os.getpid(), signal.SIGKILL)


def _kill(comm: cd.Communicator, mode: str, outdir: Path) -> int:
    victim = int(mode[4:])
    x = torch.ones(1000)
    for step in range(1000):
        if comm.rank == victim and step == 5:
            time.sleep(0.5)  # the others are now waiting in the all-reduce
            _die(outdir)
        comm.all_reduce_sum_(x)
        x /= comm.world_size
    return 0


def _kill_idle(comm: cd.Communicator, mode: str, outdir: Path) -> int:
    comm.barrier()
    if comm.rank == 2:
        time.sleep(0.5)
        _die(outdir)
    time.sleep(120)  # "computing": no collective to notice the death
    comm.barrier()
    return 0


def _raise(comm: cd.Communicator, mode: str, outdir: Path) -> int:
    comm.barrier()
    if comm.rank == 1:
        raise CryogradError("particles.mrcs: shard unreadable")
    for _ in range(1000):
        comm.barrier()
        time.sleep(0.05)
    return 0


def _hang(comm: cd.Communicator, mode: str, outdir: Path) -> int:
    comm.barrier()
    if comm.rank == 1:
        time.sleep(120)
    comm.barrier()
    return 0


_WORKER_MODES = {
    "collectives": _collectives,
    "kill": _kill,
    "kill_idle": _kill_idle,
    "raise": _raise,
    "hang": _hang,
}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    raise SystemExit(_worker(sys.argv[1], Path(sys.argv[2])))
