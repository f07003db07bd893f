"""Helpers shared by the Triton kernel tests: random rotations, errors, the interpreter process.

The kernel test modules run their CPU comparisons through Triton's interpreter in a fresh Python
process (the test file run as a script with ``--interpreter-checks``, ``TRITON_INTERPRET=1`` set
before Triton is imported) and assert on the JSON it prints; :func:`run_interpreter_checks` starts
that process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def random_rotations(n: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Uniform random rotations from normalised quaternions, ``(n, 3, 3)``."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=1,
    ).reshape(n, 3, 3)
    return rot.to(dtype)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max absolute difference relative to the reference's largest magnitude."""
    return float((a - b).abs().max() / b.abs().max())


def run_interpreter_checks(test_file: str, kernels_mode: str | None = "torch") -> dict:
    """Run ``test_file --interpreter-checks`` in a fresh ``TRITON_INTERPRET=1`` process.

    ``kernels_mode`` is the child's ``CRYOGRAD_KERNELS`` (``None``: unset). The repository root
    and ``src`` go on its ``PYTHONPATH``. Returns the JSON on the last line of its output; fails
    the test when the process does.
    """
    env = dict(os.environ, TRITON_INTERPRET="1")
    if kernels_mode is None:
        env.pop("CRYOGRAD_KERNELS", None)
    else:
        env["CRYOGRAD_KERNELS"] = kernels_mode
    paths = [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(paths).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, str(Path(test_file).resolve()), "--interpreter-checks"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"interpreter checks failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
