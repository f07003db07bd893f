"""Checks and helpers shared by the Triton kernel wrappers (no Triton import here).

Validation of a launch's data arguments, the error for a CPU tensor without the interpreter, the
device guard and an allocation that reports running out of GPU memory as one line.
"""

from __future__ import annotations

import contextlib
import math

import torch

from cryograd.errors import CryogradError
from cryograd.projectors.backend import ENV, interpreter_enabled

__all__ = ["check_inputs", "ensure_runnable", "device_guard", "allocate", "interleaved"]


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
            f"set {ENV}=torch, or TRITON_INTERPRET=1 to run them interpreted"
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


def interleaved(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor as interleaved floats (a view); real tensors unchanged."""
    return torch.view_as_real(t) if t.is_complex() else t
