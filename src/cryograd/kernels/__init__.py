"""Former home of the backends; kept as re-exports for old import paths (use the new ones).

The backends now live beside their projector (``cryograd.projectors.<name>/_torch.py``,
``_triton.py``, ``_cpu.py``) and :func:`cryograd.projectors.backend.select_backend` chooses them.

Old path -> new path:

- ``cryograd.kernels.use_kernels(t)`` -> ``select_backend(t.device, op) == "triton"``
- ``cryograd.kernels.kernel_mode`` / ``triton_available`` / ``interpreter_enabled`` ->
  :mod:`cryograd.projectors.backend`
- ``cryograd.kernels.check_inputs`` / ``ensure_runnable`` / ``device_guard`` / ``allocate`` ->
  :mod:`cryograd.projectors._launch`
- ``cryograd.kernels.fourier_slice`` -> ``cryograd.projectors.fourier_slice._triton``
- ``cryograd.kernels.real_space`` -> ``cryograd.projectors.real_space._triton``
- ``cryograd.kernels.cpu`` -> ``cryograd.projectors.fourier_slice._cpu``
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from cryograd.projectors._launch import allocate, check_inputs, device_guard, ensure_runnable
from cryograd.projectors.backend import (
    interpreter_enabled,
    kernel_mode,
    select_backend,
    triton_available,
)

__all__ = [
    "use_kernels",
    "kernel_mode",
    "triton_available",
    "interpreter_enabled",
    "check_inputs",
    "ensure_runnable",
    "device_guard",
    "allocate",
]

_MOVED = {
    "fourier_slice": "cryograd.projectors.fourier_slice._triton",
    "real_space": "cryograd.projectors.real_space._triton",
    "cpu": "cryograd.projectors.fourier_slice._cpu",
}


def use_kernels(*tensors: torch.Tensor) -> bool:
    """Whether :func:`select_backend` picks Triton for these tensors (the first tensor's device;
    a CUDA tensor among them wins). Non-tensors are ignored."""
    devices = [t.device for t in tensors if isinstance(t, torch.Tensor)]
    device = next((d for d in devices if d.type == "cuda"), devices[0] if devices else "cpu")
    return select_backend(device, "real_space") == "triton"


def __getattr__(name: str) -> ModuleType:
    # Lazy: importing the Triton modules imports Triton.
    if name in _MOVED:
        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
