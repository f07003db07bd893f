"""The mask of the masked FSC: from an array or an MRC file, checked against the box."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cryograd.errors import CryogradError
from cryograd.io.mrc import read_map

__all__ = ["load_mask"]


def load_mask(mask, box_size: int) -> torch.Tensor | None:
    """The mask as a float64 ``(D, D, D)`` tensor with values clipped to ``[0, 1]``, or None.

    Parameters
    ----------
    mask
        None, a ``(D, D, D)`` array or tensor, or the path of an MRC file.
    box_size
        ``D``, the particles' box.

    Raises
    ------
    CryogradError
        The mask's box differs from ``D``, or its values leave ``[0, 1]`` (beyond rounding).
    """
    if mask is None:
        return None
    if isinstance(mask, str | Path):
        data = read_map(mask).data
        name = str(mask)
    else:
        data = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
        name = "mask"
    if data.shape != (box_size,) * 3:
        raise CryogradError(
            f"{name}: mask box {tuple(data.shape)} differs from the particles' box "
            f"{(box_size,) * 3}"
        )
    data = np.asarray(data, dtype=np.float64)
    lo, hi = float(np.min(data)), float(np.max(data))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-4 or hi > 1 + 1e-4:
        raise CryogradError(
            f"{name}: mask values must lie within [0, 1], found values in [{lo:.4g}, {hi:.4g}]"
        )
    return torch.as_tensor(np.clip(data, 0.0, 1.0))
