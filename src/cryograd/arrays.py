"""NumPy / CuPy / torch interoperability at the public API.

Public functions that take arrays accept NumPy arrays, CuPy arrays and torch tensors, compute with
torch, and return the kind they were given. Conversions go through DLPack or ``torch.from_numpy``,
so no data is copied when the device and memory layout allow it (a read-only or byte-swapped NumPy
array is copied once). CuPy is optional: it is imported only when a CuPy array is seen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["array_kind", "to_tensor", "from_tensor", "like"]


def array_kind(x: Any) -> str:
    """``"torch"``, ``"numpy"``, ``"cupy"`` or ``"other"`` (lists, scalars...)."""
    if isinstance(x, torch.Tensor):
        return "torch"
    if isinstance(x, np.ndarray):
        return "numpy"
    if type(x).__module__.split(".")[0] == "cupy":
        return "cupy"
    return "other"


def to_tensor(
    x: Any,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A torch view of ``x`` (zero copy where possible), moved to ``device`` / ``dtype`` if given.

    Parameters
    ----------
    x
        Tensor, NumPy array, CuPy array or anything ``torch.as_tensor`` takes.
    device, dtype
        Target device and dtype; ``None`` keeps those of ``x``.
    """
    kind = array_kind(x)
    if kind == "torch":
        t = x
    elif kind == "numpy":
        arr = x
        if not (arr.flags.writeable and arr.dtype.isnative):
            arr = np.array(arr, dtype=arr.dtype.newbyteorder("="), copy=True)
        t = torch.from_numpy(arr)
    elif kind == "cupy":
        t = torch.from_dlpack(x)
    else:
        t = torch.as_tensor(x)
    if device is not None or dtype is not None:
        t = t.to(device=device, dtype=dtype)
    return t


def from_tensor(t: torch.Tensor, kind: str) -> Any:
    """Return ``t`` as the array kind ``kind`` (as :func:`array_kind` names it).

    ``"numpy"`` gives a NumPy array (a view of CPU memory when ``t`` is on the CPU), ``"cupy"`` a
    CuPy array through DLPack (zero copy on a CUDA device), ``"torch"`` and ``"other"`` the tensor.
    """
    if kind == "numpy":
        return t.detach().resolve_conj().cpu().numpy()
    if kind == "cupy":
        import cupy  # noqa: PLC0415 - optional dependency

        t = t.detach().resolve_conj()
        if t.device.type != "cuda":
            return cupy.asarray(t.numpy())
        return cupy.from_dlpack(t.contiguous())
    return t


def like(t: torch.Tensor, reference: Any) -> Any:
    """Return ``t`` as the same kind of array as ``reference``."""
    return from_tensor(t, array_kind(reference))
