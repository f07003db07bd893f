"""Triton kernels for the projectors, chosen by device.

The torch functions in :mod:`cryograd.projectors` are the reference implementation and the CPU
route. The modules :mod:`cryograd.kernels.real_space` and :mod:`cryograd.kernels.fourier_slice`
hold Triton versions with the *same signatures*, so that a reference function dispatches in one
line (as :func:`cryograd.projectors.real_space.project` does)::

    from cryograd import kernels

    def project(volume, rotations, *, batch_size=None):
        if kernels.use_kernels(volume):
            return kernels.real_space.project(volume, rotations, batch_size=batch_size)
        ...  # torch reference

Dispatched: the module functions ``project``/``backproject`` of both projectors and, per chunk,
:class:`cryograd.forward.ForwardModel` (``project``, ``backproject``, ``data_gradient``), which
calls the fused :func:`cryograd.kernels.fourier_slice.extract_slices` / ``insert_slices`` (slice
geometry, CTF and shift computed in the kernel) or the real-space kernels.

Selection, by the environment variable ``CRYOGRAD_KERNELS``:

- unset, empty or ``auto``: Triton kernels for CUDA (and ROCm) tensors when Triton is importable,
  the torch path for everything else;
- ``torch``: always the torch reference path;
- ``triton``: always the kernels, also for CPU tensors. On the CPU they run only through Triton's
  interpreter (``TRITON_INTERPRET=1``, set before Triton is first imported); this is how the tests
  exercise the kernels without a GPU.

Triton is imported lazily: torch's CUDA build brings it, a CPU install may lack it, and
``import cryograd`` never needs it.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
from types import ModuleType

import torch

from cryograd.errors import CryogradError

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

_ENV = "CRYOGRAD_KERNELS"
_MODES = ("auto", "torch", "triton")
_TRITON_OK: bool | None = None


def kernel_mode() -> str:
    """The selection asked for in ``CRYOGRAD_KERNELS``: ``"auto"``, ``"torch"`` or ``"triton"``."""
    mode = os.environ.get(_ENV, "").strip().lower() or "auto"
    if mode not in _MODES:
        raise CryogradError(
            f"environment variable {_ENV}={os.environ.get(_ENV)!r} is not one of "
            "'auto', 'torch' or 'triton'"
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


def use_kernels(*tensors: torch.Tensor) -> bool:
    """Whether operations on these tensors should run the Triton kernels.

    Parameters
    ----------
    tensors
        The operation's data tensors (usually one: the volume or the images); non-tensors are
        ignored.

    Returns
    -------
    bool
        True for CUDA tensors (unless ``CRYOGRAD_KERNELS=torch``), and for any tensor when
        ``CRYOGRAD_KERNELS=triton``; False otherwise, or when Triton is not importable in ``auto``
        mode.

    Raises
    ------
    CryogradError
        ``CRYOGRAD_KERNELS`` has an unknown value, or is ``triton`` and Triton cannot be imported.
    """
    mode = kernel_mode()
    if mode == "torch":
        return False
    if mode == "triton":
        if not triton_available():
            raise CryogradError(
                f"{_ENV}=triton but Triton cannot be imported; install it "
                "(pip install triton) or unset the variable"
            )
        return True
    on_gpu = any(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors)
    return on_gpu and triton_available()


def __getattr__(name: str) -> ModuleType:
    # Lazy submodules: importing them imports Triton and defines the jitted kernels.
    if name in ("real_space", "fourier_slice"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_inputs(op: str, data: dict[str, torch.Tensor]) -> tuple[torch.device, torch.dtype]:
    """Validate a kernel call's data arguments before anything reaches Triton.

    Geometry (rotations, shifts, CTF parameters) is not checked here: like the torch reference, the
    kernels move it to the data's device and dtype.

    Parameters
    ----------
    op
        Name of the operation, for the message.
    data
        The data arguments (volume, images, spectra, accumulators): all on one device, one real
        dtype (float32 or float64; complex tensors count by their real dtype).

    Returns
    -------
    device, dtype
        The common device and real dtype.

    Raises
    ------
    CryogradError
        Mixed devices, mixed dtypes or an unsupported dtype.
    """
    items = list(data.items())
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise CryogradError(f"{op}: argument {name!r} must be a torch tensor, got {type(t)}")
    first, ref = items[0]
    device = ref.device
    real_dtype = _real_dtype(ref)
    for name, t in items:
        if _real_dtype(t) not in (torch.float32, torch.float64):
            raise CryogradError(
                f"{op}: argument {name!r} has dtype {t.dtype}; "
                "kernels need float32 or float64 (complex64/128 for spectra)"
            )
        if _real_dtype(t) != real_dtype:
            raise CryogradError(
                f"{op}: dtype mismatch between arguments: {first!r} is "
                f"{ref.dtype}, {name!r} is {t.dtype}"
            )
        if t.device != device:
            raise CryogradError(
                f"{op}: device mismatch between arguments: {first!r} is on "
                f"{device}, {name!r} is on {t.device}"
            )
    return device, real_dtype


def ensure_runnable(op: str, device: torch.device) -> None:
    """Raise :class:`CryogradError` unless Triton runs on ``device`` (a GPU, or the interpreter)."""
    if device.type != "cuda" and not interpreter_enabled():
        raise CryogradError(
            f"{op}: Triton kernels need a GPU tensor (got {device}); on the CPU "
            f"set {_ENV}=torch, or TRITON_INTERPRET=1 to run them interpreted"
        )


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    return t.real.dtype if t.is_complex() else t.dtype


def device_guard(device: torch.device):
    """Context making ``device`` current for a kernel launch (a no-op off CUDA)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def allocate(
    op: str, shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype, zero: bool = True
) -> torch.Tensor:
    """``torch.zeros``/``empty`` that reports running out of GPU memory as one clear line."""
    try:
        if zero:
            return torch.zeros(shape, device=device, dtype=dtype)
        return torch.empty(shape, device=device, dtype=dtype)
    except torch.OutOfMemoryError:
        need = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        raise CryogradError(
            f"{op}: out of GPU memory allocating {need / 2**30:.2f} GiB for a {tuple(shape)} "
            f"{dtype} array on {device}; use a smaller --batch-size or --pad 1"
        ) from None
