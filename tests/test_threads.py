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


# (function of cryograd.cli.main, the variable it sets, its value, a value a user might set)
_PROCESS_SETTINGS = [
    ("quiet_openmp_waits", "OMP_WAIT_POLICY", "PASSIVE", "ACTIVE"),
    ("huge_pages_for_large_tensors", "THP_MEM_ALLOC_ENABLE", "1", "0"),
]


@pytest.mark.parametrize("user_sets", [False, True])
@pytest.mark.parametrize(("function", "name", "value", "user_value"), _PROCESS_SETTINGS)
def test_command_sets_process_variables_unless_the_user_chose(
    function, name, value, user_value, user_sets
) -> None:
    """``cryograd`` sets ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep; libgomp reads it
    when it loads) and ``THP_MEM_ALLOC_ENABLE=1`` (huge pages; torch's allocator reads it once)
    before torch is imported, and leaves a value the user set alone (a fresh interpreter)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != name}
    if user_sets:
        env[name] = user_value
    code = (
        f"import os, sys; from cryograd.cli.main import {function}; {function}(); "
        f"print(os.environ.get({name!r}), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == [user_value if user_sets else value, "False"], out.stderr
