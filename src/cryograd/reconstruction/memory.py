"""How much memory a reconstruction needs, and whether the device has it."""

from __future__ import annotations

import torch

from cryograd.errors import CryogradError
from cryograd.projectors import fourier_slice as fs
from cryograd.solvers.insertion import insertion_memory_bytes

__all__ = ["estimate_memory_bytes", "check_memory"]


def estimate_memory_bytes(
    box_size: int,
    method: str,
    pad: float = 2.0,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Rough peak memory of a reconstruction in bytes (grids of one half set, both halves kept,
    batches)."""
    real = torch.finfo(dtype).bits // 8
    d = int(box_size)
    p = fs.padded_size(d, pad)
    grids = insertion_memory_bytes(d, pad, dtype=dtype)
    kept = 2 * p * p * (p // 2 + 1) * real * 3  # numerator + weights of both halves
    vol = 8 * d**3 * real
    batch = batch_size * d * d * real * 12
    if method in ("adam", "sgd"):
        fft = p**3 * real * 6
        return int(fft + vol * 4 + batch * 4)
    if method == "cg":
        return int(grids + kept + p**3 * real * 4 + vol * 8 + batch)
    return int(grids + kept + vol + batch)


def _available_memory_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` in bytes (``MemAvailable`` on the CPU), or None if unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(
    box_size: int,
    method: str,
    pad: float,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> int:
    """Raise CryogradError when the estimated need exceeds the device's free memory; returns the
    estimate in bytes."""
    need = estimate_memory_bytes(box_size, method, pad, batch_size, dtype)
    have = _available_memory_bytes(device)
    if have is not None and need > have:
        device = torch.device(device)
        raise CryogradError(
            f"box {box_size} with method={method} pad={pad:g} needs about "
            f"{need / 2**30:.1f} GiB but {device} has {have / 2**30:.1f} GiB free; "
            + (
                "try pad=1, a smaller batch_size, or device='cpu'"
                if device.type != "cpu"
                else "try pad=1 or a smaller batch_size, or a machine with more memory"
            )
        )
    return need
