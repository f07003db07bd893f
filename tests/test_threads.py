"""``reconstruct --threads``: how many CPU threads a process takes."""

from __future__ import annotations

import os

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
