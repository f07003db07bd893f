"""Data-parallel runs with ``torch.distributed``: process groups from torchrun or Slurm, sharding,
sums of partial results, and a job that stops as a whole when one process fails.

Each process owns a shard of the particles (:meth:`Communicator.shard`) and adds its partial sums
into the others' with :meth:`Communicator.all_reduce_sum_`. The transport is ``torch.distributed``
only: NCCL when the processes use CUDA, Gloo on CPUs.

Launch
------
- ``torchrun --nproc_per_node=K -m cryograd reconstruct ...``: the ``env://`` variables ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` are used.
- ``srun cryograd reconstruct ...``: when the ``env://`` variables are absent, the rank, world size
  and local rank come from ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``) and
  ``SLURM_LOCALID``; the master address is ``MASTER_ADDR`` or else the first host of
  ``SLURM_STEP_NODELIST`` (else ``SLURM_JOB_NODELIST``); the port is ``MASTER_PORT`` or else
  ``10000 + SLURM_JOB_ID % 20000``.
- ``cryograd reconstruct --nproc K``: :func:`spawn` starts K local processes with the ``env://``
  variables set.
- Otherwise :func:`init_communicator` returns the trivial one-process :class:`Communicator`.

Faults
------
Every rank runs a watchdog thread that publishes a heartbeat in the rendezvous store each second
and reads the others'. :func:`run_distributed` catches an exception on a rank and publishes
``"rank R failed: cause"`` in the store; every other rank's watchdog sees it within a second, logs
it and exits the process with status 1. A rank that dies without a word (SIGKILL, out-of-memory
killer) is found by its heartbeat going quiet: after ``heartbeat_timeout_s`` (30 s by default), or
after ``suspect_timeout_s`` (3 s) once a collective on a surviving rank has failed (Gloo raises at
once when a peer's connection closes). A rank that is alive but stuck makes the others' collectives
time out after ``timeout_s``. When rank 0, which hosts the store, dies, the others lose the store
and exit naming rank 0. Ranks end with ``os._exit``, so outputs must be written atomically
(temporary name, then rename) and by rank 0 alone: a stopped job leaves no half-written file.

For tests, ``$CRYOGRAD_TEST_DIE_AT="R:N"`` makes rank R SIGKILL itself just before its N-th
collective (as the out-of-memory killer would), at a point of the run that does not depend on
timing.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from cryograd.errors import REPORT_DIR_VARIABLE, CryogradError, print_error, read_reports

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 300.0
"""Seconds a collective (or the rendezvous) may wait for the other ranks before failing."""
HEARTBEAT_INTERVAL_S = 1.0
"""Seconds between two heartbeats of a rank's watchdog."""
HEARTBEAT_TIMEOUT_S = 30.0
"""Seconds without a heartbeat after which a rank counts as dead ($CRYOGRAD_HEARTBEAT_TIMEOUT)."""
SUSPECT_TIMEOUT_S = 3.0
"""The same, once a collective on this rank has failed (a peer's connection closed)."""
EXIT_ABORTED = 1
"""Exit status of a rank stopped because it or another rank failed (2 for bad input)."""

_KEY_PREFIX = "cryograd"


# --------------------------------------------------------------------------------------------------
# Slurm host lists and the launch environment
# --------------------------------------------------------------------------------------------------


def _split_top_level(text: str) -> list[str]:
    """Split ``text`` on the commas that are not inside brackets."""
    parts: list[str] = []
    depth = 0
    start = 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' at character {i + 1}")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError("unbalanced '['")
    parts.append(text[start:])
    return parts


def _expand_range_list(body: str) -> list[str]:
    """``"01-03,07"`` -> ``["01", "02", "03", "07"]`` (zero padding kept, as Slurm does)."""
    values: list[str] = []
    for item in body.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty item in '[{body}]'")
        if "-" in item:
            low, high = item.split("-", 1)
            if not (low.isdigit() and high.isdigit()):
                raise ValueError(f"bad range '{item}' in '[{body}]'")
            if int(high) < int(low):
                raise ValueError(f"decreasing range '{item}' in '[{body}]'")
            width = len(low)
            values.extend(f"{k:0{width}d}" for k in range(int(low), int(high) + 1))
        else:
            if not item.isdigit():
                raise ValueError(f"bad number '{item}' in '[{body}]'")
            values.append(item)
    return values


def _expand_host_pattern(pattern: str) -> list[str]:
    """Expand one host pattern, e.g. ``"rack[1-2]-n[01-02]"`` (every bracket, in order)."""
    open_at = pattern.find("[")
    if open_at < 0:
        if "]" in pattern:
            raise ValueError(f"unbalanced ']' in '{pattern}'")
        return [pattern]
    close_at = pattern.find("]", open_at)
    if close_at < 0:
        raise ValueError(f"unbalanced '[' in '{pattern}'")
    head = pattern[:open_at]
    if "]" in head:
        raise ValueError(f"unbalanced ']' in '{pattern}'")
    middles = _expand_range_list(pattern[open_at + 1 : close_at])
    tails = _expand_host_pattern(pattern[close_at + 1 :])
    return [head + middle + tail for middle in middles for tail in tails]


def parse_slurm_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm compressed host list.

    Parameters
    ----------
    hostlist
        As in ``SLURM_JOB_NODELIST``, e.g. ``"node[01-03,07],gpu5"``.

    Returns
    -------
    list of str
        The host names in order, e.g. ``["node01", "node02", "node03", "node07", "gpu5"]``.

    Raises
    ------
    ValueError
        When the list is empty or malformed (unbalanced brackets, bad or decreasing ranges).
    """
    text = hostlist.strip()
    if not text:
        raise ValueError("empty host list")
    hosts: list[str] = []
    for part in _split_top_level(text):
        part = part.strip()
        if not part:
            raise ValueError(f"empty host name in '{hostlist}'")
        hosts.extend(_expand_host_pattern(part))
    return hosts


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in a job, as told by its launcher.

    Attributes
    ----------
    rank, world_size, local_rank
        Global rank, number of processes, rank on this node.
    master_addr, master_port
        Rendezvous address (rank 0's host, or torchrun's agent store).
    source
        ``"torchrun"`` (``env://`` variables) or ``"slurm"``.
    """

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str


def _env_int(env: Mapping[str, str], name: str, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise CryogradError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise CryogradError(f"environment variable {name}={value} must be at least {minimum}")
    return value


def slurm_default_port(job_id: str | int | None) -> int:
    """The rendezvous port of a Slurm job when ``MASTER_PORT`` is unset: ``10000 + id % 20000``.

    Every task of a job computes the same port; jobs sharing a node rarely collide, and the range
    stays below Linux's ephemeral ports (32768 and up). Without a job id: 29500 (torch's default).
    """
    if job_id is None or not str(job_id).strip().isdigit():
        return 29500
    return 10000 + int(str(job_id).strip()) % 20000


def resolve_launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """Read this process's place in a job from torchrun's or Slurm's environment variables.

    Parameters
    ----------
    environ
        The environment (default ``os.environ``).

    Returns
    -------
    LaunchEnv or None
        None when neither ``RANK``/``WORLD_SIZE`` nor ``SLURM_PROCID`` is set (a plain process).

    Raises
    ------
    CryogradError
        When the variables are inconsistent (rank outside the world, missing master address).
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank = _env_int(env, "RANK")
        world_size = _env_int(env, "WORLD_SIZE", minimum=1)
        # torchrun always sets LOCAL_RANK; a hand-made single-node launch may not.
        local_rank = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        if world_size > 1 and not env.get("MASTER_ADDR"):
            raise CryogradError(
                "environment variable MASTER_ADDR is not set (RANK and WORLD_SIZE are)"
            )
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        port = _env_int(env, "MASTER_PORT", minimum=1) if env.get("MASTER_PORT") else 29500
        source = "torchrun"
        names = ("RANK", "WORLD_SIZE")
    elif "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env):
        rank = _env_int(env, "SLURM_PROCID")
        ntasks_name = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        world_size = _env_int(env, ntasks_name, minimum=1)
        local_rank = _env_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        if env.get("MASTER_ADDR"):
            addr = env["MASTER_ADDR"]
        else:
            list_name = next(
                (
                    n
                    for n in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                    if env.get(n)
                ),
                None,
            )
            if list_name is None:
                if world_size > 1:
                    raise CryogradError(
                        "neither MASTER_ADDR nor SLURM_JOB_NODELIST is set: where is rank 0?"
                    )
                addr = "127.0.0.1"
            else:
                try:
                    addr = parse_slurm_hostlist(env[list_name])[0]
                except ValueError as exc:
                    raise CryogradError(f"environment variable {list_name}: {exc}") from None
        if env.get("MASTER_PORT"):
            port = _env_int(env, "MASTER_PORT", minimum=1)
        else:
            port = slurm_default_port(env.get("SLURM_JOB_ID"))
        source = "slurm"
        names = ("SLURM_PROCID", ntasks_name)
    else:
        return None
    if rank >= world_size:
        raise CryogradError(
            f"environment variable {names[0]}={rank} is not below {names[1]}={world_size}"
        )
    if not 0 < port < 65536:
        raise CryogradError(f"rendezvous port {port} is outside 1-65535")
    return LaunchEnv(rank, world_size, local_rank, addr, port, source)


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """The device a process uses: ``"auto"`` picks ``cuda:local_rank`` when CUDA is present.

    Parameters
    ----------
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` (= ``cuda:local_rank``) or ``"cuda:N"`` (as given).
    local_rank
        This process's rank on its node.

    Raises
    ------
    CryogradError
        For an unknown device, or CUDA asked for where there is none (or too few GPUs).
    """
    text = str(device).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if not text.startswith("cuda"):
        raise CryogradError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise CryogradError(f"--device {device!r}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if text == "cuda":
        if local_rank < count:
            index = local_rank
        elif count == 1:  # e.g. srun --gpus-per-task=1: each task sees its own single GPU
            index = 0
        else:
            raise CryogradError(
                f"local rank {local_rank} needs GPU {local_rank} but this node shows {count} GPUs: "
                "start at most one process per GPU"
            )
        return torch.device("cuda", index)
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise CryogradError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if parsed.index is not None and parsed.index >= count:
        raise CryogradError(f"--device {device!r}: this machine has {count} GPU(s)")
    return parsed


def shard_indices(
    indices: np.ndarray, rank: int, world_size: int, *, strided: bool = False
) -> np.ndarray:
    """The part of ``indices`` that belongs to ``rank`` of ``world_size``.

    Parameters
    ----------
    indices
        (n,) global indices (any order; the order is kept).
    rank, world_size
        This process and the number of processes.
    strided
        False: contiguous blocks (``np.array_split``; the first ``n % world_size`` ranks get one
        more), good for memory-mapped reads. True: every ``world_size``-th index from ``rank``.

    Returns
    -------
    np.ndarray
        (n_r,) a copy; across ranks the shards cover ``indices`` exactly once.
    """
    indices = np.asarray(indices)
    if indices.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {indices.shape}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if strided:
        return indices[rank::world_size].copy()
    n = indices.shape[0]
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return indices[start:stop].copy()


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# The communicator
# --------------------------------------------------------------------------------------------------


def _is_comm_error(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a failed collective (a peer gone, a timeout), not a local bug."""
    if isinstance(exc, dist.DistError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        keys = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket")
        return any(key in text for key in keys)
    return False


def _describe(exc: BaseException) -> str:
    """One line for an exception: ``"Type: message"`` (the message alone for CryogradError)."""
    if isinstance(exc, CryogradError):
        return str(exc)
    text = " ".join(str(exc).split())
    text = re.sub(r"\[/[^\]]*\.(?:cpp|cc|h|hpp):\d+\]\s*", "", text)  # [/path/pair.cc:553]
    text = text.replace(" GLHF!", "").replace(" 🏖️", "")
    if len(text) > 400:
        text = text[:400] + " ..."
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return f"out of GPU memory: {text}"
    if isinstance(exc, MemoryError):
        return f"out of memory: {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Communicator:
    """This process's view of a data-parallel job (or of a job of one process).

    Attributes
    ----------
    rank, world_size, local_rank
        Global rank, number of processes, rank on this node.
    device
        The device this process computes on (``cuda:local_rank`` under CUDA).
    timeout_s
        Seconds a collective may wait for the others before it fails.
    profile
        Synchronise CUDA around collectives so that :meth:`stats` times them exactly.

    Notes
    -----
    Build it with :func:`init_communicator` or :func:`single_process`. With one process every
    collective returns its input and nothing of ``torch.distributed`` is used.
    """

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        device: str | torch.device = "cpu",
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.local_rank = int(local_rank)
        self.device = torch.device(device)
        self.timeout_s = float(timeout_s)
        self._backend: str | None = None
        self._store: Any = None  # main-thread client of the rendezvous store (prefixed)
        self._hosts_store = False
        self._store_addr = ""
        self._watchdog: _Watchdog | None = None
        self._n_collectives = 0
        self._comm_time_s = 0.0
        self._comm_bytes = 0
        self.profile = os.environ.get("CRYOGRAD_PROFILE_COMM", "") == "1"
        self._die_at = _parse_die_at(os.environ.get("CRYOGRAD_TEST_DIE_AT", ""), self.rank)
        self._closed = False
        self._abort_hooks: list[Callable[[], None]] = []

    # -- properties -------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """True on rank 0, the one that writes outputs and shows progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when there is more than one process and a process group behind this object."""
        return self._backend is not None

    @property
    def backend(self) -> str | None:
        """``"gloo"``, ``"nccl"``, or None for one process."""
        return self._backend

    def __repr__(self) -> str:
        return (
            f"Communicator(rank={self.rank}, world_size={self.world_size}, "
            f"local_rank={self.local_rank}, device={self.device}, backend={self._backend})"
        )

    # -- collectives ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _timed(self, nbytes: int) -> Iterator[None]:
        """Count one collective and the seconds it takes (synchronising CUDA when profiling)."""
        self._n_collectives += 1
        if self._die_at == self._n_collectives:
            _die_for_test(self)
        sync = self.profile and self.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if sync:
            torch.cuda.synchronize(self.device)
        self._comm_time_s += time.perf_counter() - start
        self._comm_bytes += nbytes

    def stats(self) -> dict[str, Any]:
        """Communication so far on this rank: collectives, seconds in them, bytes reduced.

        The seconds include waiting for slower ranks. On CUDA they are exact only with
        :attr:`profile` set (``$CRYOGRAD_PROFILE_COMM=1``), which synchronises around collectives.
        """
        return {
            "world_size": self.world_size,
            "backend": self._backend,
            "n_collectives": self._n_collectives,
            "comm_time_s": self._comm_time_s,
            "comm_bytes": self._comm_bytes,
        }

    def _staged(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(view to fill in place, buffer for the backend): real view, on its device, contiguous."""
        view = torch.view_as_real(tensor) if tensor.is_complex() else tensor
        if view.device == self.device and view.is_contiguous():
            return view, view
        return view, view.to(self.device).contiguous()

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place; every rank gets the same sum.

        Parameters
        ----------
        tensor
            Any shape, real or complex (reduced as its real view), any device (staged through
            :attr:`device` when the backend cannot use it directly).

        Returns
        -------
        torch.Tensor
            ``tensor`` itself, now holding the sum.
        """
        if self.world_size == 1:
            return tensor
        view, buffer = self._staged(tensor)
        with self._timed(buffer.numel() * buffer.element_size()):
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        if buffer is not view:
            view.copy_(buffer)
        return tensor

    def all_reduce_sum_scalar(self, value: float) -> float:
        """The sum over all ranks of a Python number (reduced in float64)."""
        if self.world_size == 1:
            return float(value)
        buffer = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        with self._timed(8):
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return float(buffer.item())

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Overwrite ``tensor`` on every rank with rank ``src``'s, in place; returns it."""
        if self.world_size == 1:
            return tensor
        view, buffer = self._staged(tensor)
        with self._timed(buffer.numel() * buffer.element_size()):
            dist.broadcast(buffer, src=src)
        if buffer is not view:
            view.copy_(buffer)
        return tensor

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s picklable ``obj`` on every rank (``obj`` is ignored on the others)."""
        if self.world_size == 1:
            return obj
        holder = [obj if self.rank == src else None]
        with self._timed(0):
            dist.broadcast_object_list(holder, src=src, device=self._object_device())
        return holder[0]  # type: ignore[return-value]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, as a list indexed by rank."""
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        with self._timed(0):
            dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        """Wait until every rank gets here (fails after :attr:`timeout_s`)."""
        if self.world_size == 1:
            return
        # An all-reduce rather than dist.barrier: same timeout rules on Gloo and NCCL.
        self.all_reduce_sum_(torch.zeros(1, device=self.device))

    def _object_device(self) -> torch.device | None:
        return self.device if self._backend == "nccl" else None

    # -- sharding ---------------------------------------------------------------------------------
    def shard(self, indices: np.ndarray, *, strided: bool = False) -> np.ndarray:
        """This rank's part of the global index list ``indices`` (see :func:`shard_indices`)."""
        return shard_indices(indices, self.rank, self.world_size, strided=strided)

    # -- faults -----------------------------------------------------------------------------------
    def on_abort(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` (e.g. remove a temporary file) if this process is stopped by a failure."""
        self._abort_hooks.append(hook)

    def fail(self, exc: BaseException) -> NoReturn:
        """Report ``exc`` as this rank's failure, stop every rank, and exit this process.

        A failed collective (a peer gone or too slow) first gives the watchdog
        ``suspect_timeout_s`` to find the rank that caused it, so that the message names that
        rank; otherwise the message is ``"rank R failed: <cause>"`` with R this rank.
        """
        code = exc.exit_code if isinstance(exc, CryogradError) else EXIT_ABORTED
        if isinstance(exc, KeyboardInterrupt):
            code = 130
        if isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) and exc.code else EXIT_ABORTED
        cause = _describe(exc)
        comm_error = self._watchdog is not None and _is_comm_error(exc)
        if not isinstance(exc, CryogradError | KeyboardInterrupt | SystemExit):
            # A failed collective's traceback says little: the cause is on another rank.
            log = logger.debug if comm_error else logger.error
            log("rank %d: traceback of its failure", self.rank, exc_info=exc)
        if comm_error:
            logger.error(
                "rank %d: collective #%d failed (%s); looking for the rank that caused it",
                self.rank,
                self._n_collectives,
                cause,
            )
            # The watchdog exits the process when it finds a silent rank or another's report.
            watchdog = self._watchdog
            assert watchdog is not None  # comm_error implies a watchdog
            watchdog.suspect()
            deadline = time.monotonic() + watchdog.suspect_timeout_s + 2 * HEARTBEAT_INTERVAL_S
            while time.monotonic() < deadline:
                time.sleep(0.1)
            behind = self._ranks_behind()
            if behind:
                cause += f"; rank(s) {behind} had not reached this collective (hung or much slower)"
            cause = f"collective #{self._n_collectives} failed: {cause}"
        self.abort(f"rank {self.rank} failed: {cause}", code)

    def abort(self, message: str, exit_code: int = EXIT_ABORTED) -> NoReturn:
        """Publish ``message`` to every rank (the first published wins), print it, exit now."""
        _abort_process(self, self._store, message, exit_code)

    def _ranks_behind(self) -> list[int]:
        """Ranks whose published collective count is below this rank's."""
        if self._store is None:
            return []
        try:
            keys = [_key(f"hb/{r}") for r in range(self.world_size)]
            values = self._store.multi_get(keys)
            counts = [int(v.decode().split(":")[1]) for v in values]
        except Exception:  # noqa: BLE001
            return []
        return [r for r, n in enumerate(counts) if n < self._n_collectives and r != self.rank]

    # -- shutdown ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Leave the job after success: stop the watchdog, wait for the others, free the group."""
        if self._closed or not self.is_distributed:
            self._closed = True
            return
        self._closed = True
        try:
            self._store.set(_key(f"closed/{self.rank}"), "1")
        except Exception as exc:  # noqa: BLE001
            logger.warning("rank %d: could not mark itself finished: %s", self.rank, exc)
        if self._hosts_store:
            # Keep the store up until every rank has stopped watching it. The watchdog runs on
            # meanwhile: a rank that fails before it finishes still stops this one.
            keys = [_key(f"closed/{r}") for r in range(self.world_size)]
            deadline = time.monotonic() + self.timeout_s
            try:
                while time.monotonic() < deadline and not self._store.check(keys):
                    time.sleep(0.05)
            except Exception as exc:  # noqa: BLE001
                logger.warning("rank 0: while waiting for the others to finish: %s", exc)
        if self._watchdog is not None:
            self._watchdog.stop()
        if dist.is_initialized():
            dist.destroy_process_group()
        self._store = None


def _parse_die_at(text: str, rank: int) -> int | None:
    """``$CRYOGRAD_TEST_DIE_AT="R:N"``: the collective before which rank R kills itself (tests)."""
    text = text.strip()
    if not text:
        return None
    try:
        r, n = (int(part) for part in text.split(":"))
    except ValueError:
        raise CryogradError(f"CRYOGRAD_TEST_DIE_AT={text!r}: expected RANK:COLLECTIVE") from None
    return n if r == rank else None


def _die_for_test(comm: Communicator) -> NoReturn:
    """SIGKILL this process, as the out-of-memory killer would (``$CRYOGRAD_TEST_DIE_AT``)."""
    logger.warning(
        "rank %d: killing itself before collective #%d (CRYOGRAD_TEST_DIE_AT)",
        comm.rank,
        comm._n_collectives,
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")  # pragma: no cover


def _key(name: str) -> str:
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"{_KEY_PREFIX}/{restart}/{name}"


_EXIT_LOCK = threading.Lock()


def _abort_process(comm: Communicator, store: Any, message: str, exit_code: int) -> NoReturn:
    """Publish ``message`` (unless another failure was first), print it, and end the process.

    Called by the main thread (:meth:`Communicator.fail`) or the watchdog; the first caller wins.
    """
    if not _EXIT_LOCK.acquire(blocking=False):
        while True:  # the other thread is ending the process
            time.sleep(1.0)
    if store is not None:
        message = _publish_abort(comm, store, message)
    _exit_now(message, exit_code, comm._abort_hooks)


def _publish_abort(comm: Communicator, store: Any, message: str) -> str:
    """Put ``message`` in the store unless another rank's failure is there first; the line to print.

    The rank that hosts the store waits (2 s at most) until the other living ranks have read it,
    so that they print the cause rather than the loss of the store.
    """
    try:
        first = store.compare_set(_key("abort"), "", message)
        first = first.decode() if isinstance(first, bytes) else str(first)
        if first and first != message:
            logger.info("rank %d: its own report was: %s", comm.rank, message)
            message = f"rank {comm.rank} stopping: {first}"
        store.add(_key("abort_ack"), 1)
        if comm._hosts_store:
            silent = comm._watchdog.silent if comm._watchdog is not None else set()
            deadline = time.monotonic() + 1.5 * HEARTBEAT_INTERVAL_S + 0.5
            while time.monotonic() < deadline:
                if store.add(_key("abort_ack"), 0) >= comm.world_size - len(silent):
                    break
                time.sleep(0.05)
    except Exception as exc:  # noqa: BLE001 - the store may be gone with rank 0
        logger.debug("rank %d: could not publish the failure: %s", comm.rank, exc)
    return message


def _log_to_files(message: str) -> None:
    """Log ``message`` as an error to the log files only: it is printed on stderr just after."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    for handler in logging.getLogger().handlers:
        if getattr(handler, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__):
            continue
        try:
            if record.levelno >= handler.level:
                handler.handle(record)
        except Exception:  # noqa: BLE001
            pass


def _exit_now(message: str, exit_code: int, hooks: Sequence[Callable[[], None]] = ()) -> NoReturn:
    """Log ``message``, print it on stderr, run the abort hooks, and end the process at once."""
    _log_to_files(message)
    for hook in hooks:
        try:
            hook()
        except Exception:  # noqa: BLE001
            pass
    try:
        print_error(message)
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(exit_code)


class _Watchdog(threading.Thread):
    """Heartbeats in the store; exits the process when another rank fails or falls silent."""

    def __init__(
        self,
        comm: Communicator,
        store: Any,
        *,
        interval_s: float,
        timeout_s: float,
        suspect_timeout_s: float,
    ) -> None:
        super().__init__(name=f"cryograd-watchdog-{comm.rank}", daemon=True)
        self.comm = comm
        self.store = store
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.suspect_timeout_s = min(suspect_timeout_s, timeout_s)
        self._stop_event = threading.Event()
        self._suspect = threading.Event()
        self._beat = 0
        self.silent: set[int] = set()  # ranks quiet for a few heartbeats (for the abort)

    def suspect(self) -> None:
        """Use the short silence limit from now on (a collective here has failed)."""
        self._suspect.set()

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=10 * self.interval_s + 5.0)

    def beat(self) -> None:
        self._beat += 1
        self.store.set(_key(f"hb/{self.comm.rank}"), f"{self._beat}:{self.comm._n_collectives}")

    def run(self) -> None:
        comm = self.comm
        others = [r for r in range(comm.world_size) if r != comm.rank]
        keys = [_key(f"hb/{r}") for r in others]
        last_value: dict[int, bytes] = {}
        last_change = {r: time.monotonic() for r in others}
        while not self._stop_event.wait(self.interval_s):
            try:
                self.beat()
                if self.store.check([_key("abort")]):
                    if self._stop_event.is_set():
                        return
                    # compare_set returns the message already there: this prints that one.
                    _abort_process(comm, self.store, f"rank {comm.rank} stopping", EXIT_ABORTED)
                values = self.store.multi_get(keys)
                now = time.monotonic()
                for r, value in zip(others, values):
                    if value != last_value.get(r):
                        last_value[r] = value
                        last_change[r] = now
                limit = self.suspect_timeout_s if self._suspect.is_set() else self.timeout_s
                self.silent = {r for r in others if now - last_change[r] > 2.5 * self.interval_s}
                silent = [r for r in others if now - last_change[r] > limit]
                silent = [r for r in silent if not self.store.check([_key(f"closed/{r}")])]
                if silent and not self._stop_event.is_set():
                    r = silent[0]
                    message = (
                        f"rank {r} failed: no heartbeat for {now - last_change[r]:.0f} s "
                        "(process killed, out of memory, or its machine is unreachable)"
                    )
                    _abort_process(comm, self.store, message, EXIT_ABORTED)
            except Exception as exc:  # noqa: BLE001 - the store is gone: its host died
                if self._stop_event.is_set():
                    return
                agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
                host = "torchrun's agent" if agent else "rank 0"
                _exit_now(
                    f"rank {comm.rank} stopping: rank 0 failed: lost the rendezvous store at "
                    f"{comm._store_addr} hosted by {host} ({_describe(exc)})",
                    EXIT_ABORTED,
                    comm._abort_hooks,
                )


def single_process(device: str | torch.device = "cpu") -> Communicator:
    """The trivial communicator of a job of one process (no ``torch.distributed`` involved)."""
    return Communicator(0, 1, 0, device)


def _heartbeat_timeout_default() -> float:
    raw = os.environ.get("CRYOGRAD_HEARTBEAT_TIMEOUT", "").strip()
    if not raw:
        return HEARTBEAT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise CryogradError(f"CRYOGRAD_HEARTBEAT_TIMEOUT={raw!r} is not a number") from None
    if value <= 0:
        raise CryogradError(f"CRYOGRAD_HEARTBEAT_TIMEOUT={raw!r} must be positive")
    return value


def init_communicator(
    timeout_s: float = DEFAULT_TIMEOUT_S,
    device: str | torch.device = "auto",
    *,
    heartbeat_timeout_s: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> Communicator:
    """Join the job this process was launched into (torchrun, Slurm, :func:`spawn`), or none.

    Parameters
    ----------
    timeout_s
        Seconds the rendezvous and each collective may wait for the other ranks (``--timeout``).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (see :func:`resolve_device`); CUDA means
        ``cuda:local_rank`` and the NCCL backend, the CPU the Gloo backend.
    heartbeat_timeout_s
        Seconds of silence after which another rank counts as dead (default 30, or
        ``$CRYOGRAD_HEARTBEAT_TIMEOUT``), capped at ``timeout_s``.
    environ
        The environment to read (default ``os.environ``).

    Returns
    -------
    Communicator
        Set up and joined; :func:`single_process` when there is no launcher or one process.

    Raises
    ------
    CryogradError
        For inconsistent launch variables, a bad device, or a rendezvous that times out.
    """
    if timeout_s <= 0:
        raise CryogradError(f"--timeout {timeout_s}: must be positive")
    launch = resolve_launch_env(environ)
    if launch is None or launch.world_size == 1:
        local_rank = 0 if launch is None else launch.local_rank
        return single_process(resolve_device(device, local_rank))
    die_with_parent()  # a rank never outlives its launcher (torchrun, srun, --nproc)
    dev = resolve_device(device, launch.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    env = os.environ if environ is None else environ
    use_agent_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    hosts_store = launch.rank == 0 and not use_agent_store
    where = f"{launch.master_addr}:{launch.master_port}"
    (logger.info if launch.rank == 0 else logger.debug)(
        "rank %d of %d (local rank %d, %s launch): joining %s on %s with %s",
        launch.rank,
        launch.world_size,
        launch.local_rank,
        launch.source,
        where,
        dev,
        backend,
    )
    try:
        store = dist.TCPStore(
            launch.master_addr,
            launch.master_port,
            launch.world_size,
            hosts_store,
            timeout=timeout,
            multi_tenant=not use_agent_store,
        )
        dist.init_process_group(
            backend=backend,
            store=store,
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timeout,
            device_id=dev if dev.type == "cuda" else None,
        )
    except (dist.DistError, RuntimeError) as exc:
        raise CryogradError(
            f"rank {launch.rank}: could not join the {launch.world_size}-process job at {where} "
            f"within {timeout_s:g} s ({_describe(exc)}); were all processes started "
            "(srun, torchrun or --nproc)?"
        ) from None
    comm = Communicator(launch.rank, launch.world_size, launch.local_rank, dev, timeout_s=timeout_s)
    comm._backend = backend
    comm._store = store
    comm._hosts_store = hosts_store
    comm._store_addr = where
    hb_timeout = (
        _heartbeat_timeout_default() if heartbeat_timeout_s is None else heartbeat_timeout_s
    )
    hb_timeout = min(float(hb_timeout), float(timeout_s))
    # The watchdog talks to the store through its own client (a client is not thread-safe).
    watch_store = dist.TCPStore(
        launch.master_addr,
        launch.master_port,
        launch.world_size,
        False,
        timeout=datetime.timedelta(seconds=max(10.0, min(hb_timeout, timeout_s))),
    )
    watchdog = _Watchdog(
        comm,
        watch_store,
        interval_s=HEARTBEAT_INTERVAL_S,
        timeout_s=hb_timeout,
        suspect_timeout_s=SUSPECT_TIMEOUT_S,
    )
    watchdog.beat()
    comm._watchdog = watchdog
    comm.barrier()  # every heartbeat key exists before anyone watches them
    watchdog.start()
    return comm


def run_distributed(fn: Callable[..., T], comm: Communicator, *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` on this rank; on failure stop the whole job.

    With one process this is a plain call (exceptions propagate to the caller). With several,
    an exception on this rank is logged as ``"rank R failed: cause"``, published to the other
    ranks (which exit with status 1 within about a second) and this process exits at once with
    status 2 for a :class:`~cryograd.errors.CryogradError`, else 1. On success the communicator
    is closed and ``fn``'s result returned.
    """
    if not comm.is_distributed:
        return fn(*args, **kwargs)
    try:
        result = fn(*args, **kwargs)
    except SystemExit as exc:
        if exc.code in (0, None):
            comm.close()
            raise
        comm.fail(exc)
    except BaseException as exc:  # noqa: BLE001 - every failure must stop the job
        comm.fail(exc)
    comm.close()
    return result


# --------------------------------------------------------------------------------------------------
# Logging and local spawning
# --------------------------------------------------------------------------------------------------


def setup_rank_logging(
    outdir: str | Path, comm: Communicator, level: int = logging.INFO
) -> Path | None:
    """Send the log of ranks other than 0 to ``OUTDIR/rank{R}.log`` (errors also to stderr).

    Rank 0 keeps the logging it has (stderr, the run's log). Call it after rank 0 has checked the
    output folder.

    Returns
    -------
    Path or None
        The log file of this rank, or None on rank 0.
    """
    if comm.is_main:
        return None
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"rank{comm.rank}.log"
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    file_handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s rank{comm.rank} %(levelname)s %(name)s: %(message)s", "%H:%M:%S"
        )
    )
    err_handler = logging.StreamHandler(sys.stderr)
    err_handler.setLevel(logging.ERROR)
    # This module prints its own one-line report of a failure; the details stay in the file.
    err_handler.addFilter(lambda record: not record.name.startswith(__name__))
    err_handler.setFormatter(logging.Formatter(f"rank {comm.rank}: %(levelname)s %(message)s"))
    root.addHandler(file_handler)
    root.addHandler(err_handler)
    root.setLevel(level)
    return path


def spawn_needed(nproc: int, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``--nproc nproc`` asks this process to :func:`spawn` the job's processes.

    False inside a launched job whose size is ``nproc`` (the spawned processes themselves, torchrun,
    srun) or for ``nproc == 1``.

    Raises
    ------
    CryogradError
        When ``nproc`` is below 1 or differs from the size of the job this process is part of.
    """
    if nproc < 1:
        raise CryogradError(f"--nproc {nproc}: must be at least 1")
    launch = resolve_launch_env(environ)
    if launch is not None and launch.world_size > 1:
        if nproc not in (1, launch.world_size):
            raise CryogradError(
                f"--nproc {nproc} conflicts with the {launch.world_size} processes started by "
                f"{launch.source}: leave --nproc out under a launcher"
            )
        return False
    return nproc > 1


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent (the launcher) dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)`` through ctypes); returns whether it was set. When the
    launcher that started this process (``$CRYOGRAD_LAUNCHER_PID``) is already gone, exits now.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    launcher = os.environ.get("CRYOGRAD_LAUNCHER_PID", "")
    if ok and launcher.isdigit() and os.getppid() != int(launcher):
        _exit_now("launcher is gone before this process started", EXIT_ABORTED)
    return ok


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def warn_oversubscription(nproc: int) -> None:
    """Warn when ``nproc`` CPU processes would share fewer cores (each then runs much slower)."""
    cores = usable_cores()
    if nproc > cores and not torch.cuda.is_available():
        logger.warning(
            "--nproc %d on %d CPU core(s): the processes compete for the cores and the run is "
            "slower than with --nproc %d",
            nproc,
            cores,
            cores,
        )


def _describe_status(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def spawn(
    nproc: int,
    argv: Sequence[str],
    *,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    grace_s: float = 10.0,
    settle_s: float = 6.0,
    poll_s: float = 0.1,
) -> int:
    """Run ``nproc`` local processes of one job and wait for them (``--nproc`` without a launcher).

    Each process runs ``command + argv`` (``command`` defaults to ``python -m cryograd``) with
    ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR=127.0.0.1`` and a
    free ``MASTER_PORT`` set, as torchrun would, and ``OMP_NUM_THREADS`` = cores / ``nproc`` unless
    already set.

    Parameters
    ----------
    nproc
        Number of processes.
    argv
        Arguments after the command, e.g. ``["reconstruct", "p.star", "-o", "out"]``.
    command
        The program to start (default ``[sys.executable, "-m", "cryograd"]``).
    env
        Base environment (default ``os.environ``).
    grace_s
        Seconds the other processes get to end after SIGTERM before SIGKILL.
    settle_s
        Seconds the other processes get to stop on their own after one has failed (their
        watchdogs notice within a few seconds and print the cause) before SIGTERM.
    poll_s
        Seconds between two checks of the processes.

    Returns
    -------
    int
        0 when every process succeeded; else the failing process's status (1 when it was killed by
        a signal), after stopping the others; which rank failed and how is printed by the ranks
        themselves, or here when one was killed by a signal or the others had to be stopped.
    """
    if nproc < 1:
        raise CryogradError(f"--nproc {nproc}: must be at least 1")
    base = dict(os.environ if env is None else env)
    for name in list(base):
        if name.startswith("TORCHELASTIC_"):
            del base[name]
    warn_oversubscription(nproc)
    base["CRYOGRAD_LAUNCHER_PID"] = str(os.getpid())
    base.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    base.setdefault("TORCH_SHOW_CPP_STACKTRACES", "0")
    port = find_free_port()
    if "OMP_NUM_THREADS" not in base:
        base["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    cmd = list(command) if command is not None else [sys.executable, "-m", "cryograd"]
    procs: list[subprocess.Popen] = []
    reports = tempfile.mkdtemp(prefix="cryograd-ranks-")
    base[REPORT_DIR_VARIABLE] = reports  # the ranks leave their error line here: one line printed
    try:
        for rank in range(nproc):
            child_env = dict(base)
            child_env.update(
                RANK=str(rank),
                WORLD_SIZE=str(nproc),
                LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE=str(nproc),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            )
            procs.append(subprocess.Popen([*cmd, *argv], env=child_env))
        logger.info("spawned %d processes (rendezvous on 127.0.0.1:%d)", nproc, port)
        while True:
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):
                # Give the others a moment to stop on their own (their watchdogs see the failure
                # and print its cause), then pick the likeliest first cause: a process killed by
                # a signal, else one that failed itself (bad input, status 2) over the ranks it
                # stopped (status 1).
                deadline = time.monotonic() + settle_s
                while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                    time.sleep(poll_s)
                codes = [p.poll() for p in procs]
                failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
                rank, code = min(failed, key=lambda rc: (rc[1] >= 0, rc[1] == EXIT_ABORTED, rc[0]))
                running = [p for p in procs if p.poll() is None]
                _stop_processes(running, grace_s)
                print_error(_job_failure_line(rank, code, len(running), read_reports(reports)))
                return code if code > 0 else EXIT_ABORTED
            if all(c == 0 for c in codes):
                return 0
            time.sleep(poll_s)
    except BaseException:
        _stop_processes([p for p in procs if p.poll() is None], grace_s)
        raise
    finally:
        shutil.rmtree(reports, ignore_errors=True)


def _job_failure_line(rank: int, code: int, n_stopped: int, reports: Mapping[int, str]) -> str:
    """The one line for a failed job: rank ``rank`` ended with ``code``; the ranks' own lines.

    A rank killed by a signal could not say why: the line says how it died. Otherwise the failing
    rank's own line, else the line of the rank that reported a failure first (a rank stopping for
    another's failure repeats that one), else the exit status.
    """
    tail = f"; stopped the other {n_stopped} process(es)" if n_stopped else ""
    if code < 0 or not reports:
        return f"rank {rank} {_describe_status(code)}{tail}"
    own = reports.get(rank, "")
    if own and not own.split(":", 1)[0].endswith("stopping"):
        return own + tail
    causes = [t for _, t in sorted(reports.items()) if not t.split(":", 1)[0].endswith("stopping")]
    if causes:
        return causes[0] + tail
    first = reports.get(rank) or next(iter(sorted(reports.items())))[1]
    return first.split(": ", 1)[1] + tail if ": " in first else first + tail


def _stop_processes(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
