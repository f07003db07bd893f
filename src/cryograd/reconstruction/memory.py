"""How much memory a reconstruction needs, and whether the device has it."""

from __future__ import annotations

import torch

from cryograd.errors import CryogradError
from cryograd.projectors import fourier_slice as fs
from cryograd.solvers.insertion import insertion_memory_bytes

__all__ = ["estimate_memory_bytes", "check_memory"]


#: Resident memory of the interpreter with torch, numpy, pandas and cryograd imported (bytes).
BASE_BYTES = 400 * 2**20
#: Peak of the direct method's grid phase in units of one real ``P²(P // 2 + 1)`` grid: the end of
#: half 2's insertion, which holds half 1's numerator (2) and weights (1), half 2's packed
#: accumulator (3) and the two grids it is folded into (3). The division runs slab by slab
#: (:mod:`cryograd.solvers.division`, one ``(D, P, P // 2 + 1)`` intermediate) and the full set's
#: sums go into half 1's grids, so neither phase holds more. Measured with a sampler of the
#: resident memory at box 256 and 448, pad 2 (9.0 units both).
DIRECT_GRID_UNITS = 9.0
#: The same with ``refine > 0`` (the Toeplitz normal operator of the refinement steps).
REFINE_GRID_UNITS = 30.0
#: Peak of ``--robust``'s IRLS phase (:mod:`cryograd.reconstruction.robust`): a half's insertion
#: held between rounds (3) while the weight changes are inserted (packed accumulator and the
#: grids it is folded into, 6); its scoring holds less (the insertion, the map's padded spectrum
#: and the weights' extended copy, ~7). With ``direct`` the first half's final sums are kept for
#: the method (3 more; the method then inserts nothing).
ROBUST_GRID_UNITS = 9.0
ROBUST_KEPT_GRID_UNITS = 12.0
#: Peak of the resolution assessment (half maps and full map in the run's precision, mask,
#: phase-randomised maps, FSCs, the local filter's bands one at a time) in float64 ``D³`` volumes:
#: measured 9.2 at box 256 (the phase randomisation's float64 spectra).
ASSESS_VOLUMES = 10
#: Bytes per image sample of a batch (images, their spectra, CTF parameters; 16 matches the
#: measured peak at box 128 × 5,000, pad 2, where the batch is a quarter of the grid phase).
BATCH_BYTES_PER_SAMPLE = 16


def estimate_memory_bytes(
    box_size: int,
    method: str,
    pad: float = 2.0,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float32,
    *,
    refine: int = 0,
    robust: bool = False,
) -> int:
    """Peak resident memory of a reconstruction in bytes (what ``/usr/bin/time -v`` reports).

    ``direct`` holds what RELION holds (the numerator and weights of both halves, a batch) plus
    the second half's insertion accumulator while it is folded, on the padded half grid of
    ``P²(P // 2 + 1)`` samples; the resolution assessment afterwards holds a few ``D³`` volumes;
    the peak is the larger of the two phases plus the interpreter.

    Parameters
    ----------
    box_size
        ``D`` in pixels.
    method
        ``direct``, ``cg``, ``adam`` or ``sgd``.
    pad
        Padding factor (``P`` = :func:`~cryograd.projectors.fourier_slice.padded_size`).
    batch_size
        Particles per batch.
    dtype
        Real compute dtype.
    refine
        ``direct``: the CG refinement steps (0: none).
    robust
        With ``--robust`` (its IRLS phase: :data:`ROBUST_GRID_UNITS`, or with ``direct``
        :data:`ROBUST_KEPT_GRID_UNITS`).

    Returns
    -------
    int
        Bytes.
    """
    real = torch.finfo(dtype).bits // 8
    d = int(box_size)
    p = fs.padded_size(d, pad)
    unit = p * p * (p // 2 + 1) * real  # one real padded half grid
    batch = min(int(batch_size), fs.default_batch_size(d)) * d * d * BATCH_BYTES_PER_SAMPLE
    assess = ASSESS_VOLUMES * 8 * d**3
    grid: float
    if method in ("adam", "sgd"):
        fft = p**3 * real * 6
        grid = fft + 8 * d**3 * real * 4 + batch * 4
    elif method == "cg":
        grids = insertion_memory_bytes(d, pad, dtype=dtype)
        grid = grids + 6 * unit + p**3 * real * 4 + 8 * d**3 * real * 8 + batch
    else:
        units = REFINE_GRID_UNITS if refine > 0 else DIRECT_GRID_UNITS
        if robust:
            units = max(units, ROBUST_KEPT_GRID_UNITS)
        grid = units * unit + batch
    if robust:
        grid = max(grid, ROBUST_GRID_UNITS * unit + batch)
    return int(BASE_BYTES + max(grid, assess))


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
    *,
    refine: int = 0,
    robust: bool = False,
) -> int:
    """Raise CryogradError when the estimated need exceeds the device's free memory; returns the
    estimate in bytes (``robust``: see :func:`estimate_memory_bytes`)."""
    need = estimate_memory_bytes(
        box_size, method, pad, batch_size, dtype, refine=refine, robust=robust
    )
    have = _available_memory_bytes(device)
    if have is not None and need > have:
        device = torch.device(device)
        hints = []
        if method == "direct" and refine > 0:
            smaller = estimate_memory_bytes(box_size, method, pad, batch_size, dtype, refine=0)
            hints.append(f"refine=0 (about {smaller / 2**30:.1f} GiB)")
        if pad > 1:
            smaller = estimate_memory_bytes(box_size, method, 1.0, batch_size, dtype, refine=refine)
            hints.append(f"pad=1 (about {smaller / 2**30:.1f} GiB)")
        hints.append("device='cpu'" if device.type != "cpu" else "a machine with more memory")
        raise CryogradError(
            f"box {box_size} with method={method} pad={pad:g}"
            + (f" refine={refine}" if method == "direct" else "")
            + f" needs about {need / 2**30:.1f} GiB but {device} has {have / 2**30:.1f} GiB "
            f"free; try {', '.join(hints[:-1])}{' or ' if len(hints) > 1 else ''}{hints[-1]}"
        )
    return need
