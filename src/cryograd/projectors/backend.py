"""The one place that decides which backend runs a projector operation.

Three backends implement every projector operation side by side
(``projectors/<name>/_torch.py``, ``_triton.py``, ``_cpu.py``):

- ``"torch"``: the reference implementation (any device);
- ``"triton"``: the fused Triton kernels (CUDA/ROCm; on the CPU only through Triton's interpreter,
  ``TRITON_INTERPRET=1`` set before Triton is first imported, which is how the tests run them);
- ``"cpu"``: compiled C loops (``pip install`` builds them where a C compiler is present). Only the
  Fourier-slice projector has them; the real-space projector answers ``"torch"`` instead.

:func:`select_backend` reads the environment variable ``CRYOGRAD_KERNELS``:

- unset, empty or ``auto``: ``"triton"`` for CUDA tensors when Triton imports; ``"cpu"`` for CPU
  tensors when the operation has compiled loops and they were built; ``"torch"`` otherwise;
- ``torch``: always the reference;
- ``triton``: always the kernels, also for CPU tensors (an error when Triton cannot be imported);
- ``cpu``: the compiled loops for CPU tensors (an error when they were not built; the torch
  reference for operations without compiled loops and for other devices).

Nothing else in cryograd reads ``CRYOGRAD_KERNELS``. Triton and the compiled library are loaded
lazily: ``import cryograd`` never needs them.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
from functools import cache
from types import ModuleType
from typing import Literal

import torch

from cryograd.errors import CryogradError

__all__ = [
    "Backend",
    "BACKENDS",
    "OPERATIONS",
    "select_backend",
    "kernel_mode",
    "triton_available",
    "interpreter_enabled",
    "cpu_library",
    "cpu_available",
    "triton_module",
    "kernel_batch_size",
]

Backend = Literal["torch", "triton", "cpu"]
BACKENDS: tuple[str, ...] = ("torch", "triton", "cpu")
ENV = "CRYOGRAD_KERNELS"
_MODES = ("auto",) + BACKENDS

#: Operations (one per projector) and the module of their compiled CPU loops (None: none).
OPERATIONS: dict[str, str | None] = {
    "fourier_slice": "cryograd.projectors.fourier_slice._cpu_slices",
    "real_space": None,
}
#: Module of each operation's Triton kernels.
_TRITON_MODULES = {
    "fourier_slice": "cryograd.projectors.fourier_slice._triton",
    "real_space": "cryograd.projectors.real_space._triton",
}
_TRITON_OK: bool | None = None


def kernel_mode() -> str:
    """The choice asked for in ``CRYOGRAD_KERNELS``: ``auto``, ``torch``, ``triton`` or ``cpu``."""
    mode = os.environ.get(ENV, "").strip().lower() or "auto"
    if mode not in _MODES:
        raise CryogradError(
            f"environment variable {ENV}={os.environ.get(ENV)!r} is not one of "
            "'auto', 'torch', 'triton' or 'cpu'"
        )
    return mode


def triton_available() -> bool:
    """Whether ``import triton`` works here (checked once)."""
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            importlib.import_module("triton")
            importlib.import_module("triton.language")
            _TRITON_OK = True
        except Exception:  # ImportError, or a broken install failing at import
            _TRITON_OK = False
    return _TRITON_OK


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to interpret kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


@cache
def cpu_library(op: str) -> ctypes.CDLL | None:
    """The compiled CPU loops of operation ``op``, loaded; None if it has none or they fail."""
    name = OPERATIONS[op]
    if name is None:
        return None
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith((".so", ".pyd", ".dylib")):
        return None
    try:
        return ctypes.CDLL(spec.origin)
    except OSError:
        return None


def cpu_available(op: str = "fourier_slice") -> bool:
    """Whether operation ``op`` has compiled CPU loops that were built and load."""
    return cpu_library(op) is not None


def triton_module(op: str) -> ModuleType:
    """The module of ``op``'s Triton kernels (imports Triton: only for the ``triton`` backend)."""
    return importlib.import_module(_TRITON_MODULES[op])


def _check_op(op: str) -> None:
    if op not in OPERATIONS:
        raise CryogradError(f"unknown projector operation {op!r}; known: {sorted(OPERATIONS)}")


def select_backend(device: torch.device | str, op: str = "fourier_slice") -> Backend:
    """The backend that runs operation ``op`` on tensors of ``device``.

    Parameters
    ----------
    device
        Device of the operation's data (volume or images).
    op
        ``"fourier_slice"`` or ``"real_space"`` (:data:`OPERATIONS`).

    Returns
    -------
    str
        ``"torch"``, ``"triton"`` or ``"cpu"`` (see the module docstring for the rules).

    Raises
    ------
    CryogradError
        ``CRYOGRAD_KERNELS`` has an unknown value; it asks for ``triton`` and Triton cannot be
        imported; it asks for ``cpu`` and the compiled loops were not built.
    """
    _check_op(op)
    mode = kernel_mode()
    dev = torch.device(device)
    if mode == "torch":
        return "torch"
    if mode == "triton":
        if not triton_available():
            raise CryogradError(
                f"{ENV}=triton but Triton cannot be imported; install it "
                "(pip install triton) or unset the variable"
            )
        return "triton"
    has_cpu = dev.type == "cpu" and OPERATIONS[op] is not None
    if mode == "cpu":
        if has_cpu and not cpu_available(op):
            raise CryogradError(
                f"{ENV}=cpu but the compiled CPU loops were not built; reinstall cryograd with a "
                "C compiler present (pip install -e .) or unset the variable"
            )
        return "cpu" if has_cpu else "torch"
    if dev.type == "cuda" and triton_available():
        return "triton"
    if has_cpu and cpu_available(op):
        return "cpu"
    return "torch"


#: Image samples (``D²`` per particle) per chunk on the Triton path: bounds the ``(b, D, D)`` and
#: ``(b, D, D // 2 + 1)`` temporaries only (the kernels keep no per-sample geometry).
KERNEL_CHUNK_SAMPLES = 1 << 24


def kernel_batch_size(box_size: int) -> int:
    """Default particles per chunk on the Triton path (about 16 M image samples)."""
    return max(1, KERNEL_CHUNK_SAMPLES // (box_size * box_size))
