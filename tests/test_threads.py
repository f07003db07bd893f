"""``reconstruct --threads``: how many CPU threads a process takes."""

from __future__ import annotations

import os
import platform
import sys

import pytest

from cryograd.cli.reconstruct import cpu_threads, usable_cores
from cryograd.errors import CryogradError


def test_default_is_the_usable_cores_shared_among_processes() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cores() == cores
    assert cpu_threads(None) == cores
    assert cpu_threads(None, processes=cores * 4) == 1
    assert cpu_threads(3) == 3


def test_threads_must_be_positive() -> None:
    from cryograd.cli.main import build_parser
    from cryograd.cli.reconstruct import _check_options

    args = build_parser().parse_args(["reconstruct", "x.star", "-o", "out", "--threads", "0"])
    with pytest.raises(CryogradError, match="threads"):
        _check_options(args)


@pytest.mark.parametrize("preset", [None, "ACTIVE"])
def test_command_lets_idle_openmp_threads_sleep(preset) -> None:
    """``cryograd`` sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads libgomp, unless the
    user chose a policy (a fresh interpreter: libgomp reads the variable once)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = (
        "import os, sys; from cryograd.cli.main import quiet_openmp_waits; quiet_openmp_waits(); "
        "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == [preset or "PASSIVE", "False"], out.stderr


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_command_recycles_freed_blocks_and_asks_for_huge_pages() -> None:
    """After ``keep_freed_pages`` (run by ``cryograd`` before torch loads), freed 16 MB blocks are
    reused without new page faults (glibc's default returns them: about 15,000 faults per round
    here), and torch's large allocations get transparent huge pages unless the user chose."""
    import subprocess

    code = (
        "import os, resource, numpy as np\n"
        "from cryograd.cli.main import keep_freed_pages\n"
        "keep_freed_pages()\n"
        "def faults():\n"
        "    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(10):\n"
        "        blocks = [np.empty(16 << 20, dtype=np.uint8) for _ in range(3)]\n"
        "        for b in blocks: b.fill(1)\n"
        "        del blocks, b\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0\n"
        "faults()\n"
        "print(faults(), os.environ.get('THP_MEM_ALLOC_ENABLE'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    faults, thp = out.stdout.split()
    pages_per_round = 10 * 3 * (16 << 20) // 4096
    assert int(faults) < 0.01 * pages_per_round, out.stderr
    assert thp == "1"
    env["THP_MEM_ALLOC_ENABLE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split()[1] == "0", out.stderr
