"""``reconstruct --threads``: how many CPU threads a process takes."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("preset", [None, "0"])
def test_command_asks_for_huge_pages_unless_the_user_chose(preset) -> None:
    """``cryograd`` sets ``THP_MEM_ALLOC_ENABLE=1`` (torch's CPU allocator reads it once) before
    torch is imported, and leaves a value the user set alone (a fresh interpreter)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    code = (
        "import os, sys; from cryograd.cli.main import huge_pages_for_large_tensors; "
        "huge_pages_for_large_tensors(); "
        "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == [preset or "1", "False"], out.stderr
