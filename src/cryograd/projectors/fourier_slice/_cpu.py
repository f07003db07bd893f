"""Compiled CPU loops for Fourier-slice insertion and extraction (optional, loaded with ctypes).

The torch path (``_torch.py``) computes the slice geometry as
``(batch × samples)`` tensors and scatters each sample into its 8 trilinear corners with 8
``index_add_`` passes; on a CPU that is bound by memory traffic (about 140 particles/s at box 128,
``pad 2``, on one core). The C loops in ``_cpu_slices.c`` are the CPU counterpart of the Triton
kernels: the same geometry per sample, all 8 corners and all channels together, no temporaries.

They are used for CPU tensors when :func:`cryograd.projectors.backend.select_backend` answers
``"cpu"`` (the extension was built, ``CRYOGRAD_KERNELS`` is ``auto`` or ``cpu``). The tests compare
them with the torch reference.
"""

from __future__ import annotations

import ctypes
from functools import cache

import torch

from cryograd.projectors.backend import cpu_library, select_backend
from cryograd.projectors.fourier_slice._torch import TorchSteps
from cryograd.projectors.fourier_slice.geometry import (
    SliceGeometry,
    extended_strides,
    slice_sample_positions,
)

__all__ = ["available", "usable", "insert_slices", "extract_slices", "CpuSteps"]

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_CTYPE = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}


@cache
def _library() -> ctypes.CDLL | None:
    lib = cpu_library("fourier_slice")
    if lib is None:
        return None
    for dtype, suffix in _SUFFIX.items():
        for name in ("insert", "extract"):
            fn = getattr(lib, f"cryograd_{name}_{suffix}")
            # (dims[8], rot, kx, ky, flat, slices, scale, grid); dims as in _cpu_slices.c
            fn.argtypes = [ctypes.c_void_p] * 6 + [_CTYPE[dtype], ctypes.c_void_p]
            fn.restype = None
    return lib


def available() -> bool:
    """Whether the compiled loops were built and load."""
    return _library() is not None


def usable(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (32/64-bit) takes the compiled loops (:func:`select_backend`: ``cpu``)."""
    real = tensor.real.dtype if tensor.is_complex() else tensor.dtype
    if real not in _SUFFIX:
        return False
    return select_backend(tensor.device, "fourier_slice") == "cpu"


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _call(name: str, rotations, box_size, padded, slices_real, channels, grid_real) -> None:
    dtype = grid_real.dtype
    rot = rotations.to(dtype).contiguous()
    kx, ky, flat = slice_sample_positions(box_size, dtype=dtype)
    sz, sy = extended_strides(padded)
    fn = getattr(_library(), f"cryograd_{name}_{_SUFFIX[dtype]}")
    dims = torch.tensor(
        [
            rot.shape[0],
            kx.numel(),
            box_size * (box_size // 2 + 1),
            channels,
            1 if channels == 2 else -1,
            padded // 2,
            sz,
            sy,
        ],
        dtype=torch.int64,
    )
    fn(
        _ptr(dims),
        _ptr(rot),
        _ptr(kx),
        _ptr(ky),
        _ptr(flat),
        _ptr(slices_real),
        padded / box_size,
        _ptr(grid_real),
    )


def insert_slices(
    slices: torch.Tensor, rotations: torch.Tensor, padded: int, grid_flat: torch.Tensor
) -> None:
    """Add central slices into a flat extended grid, in place (the compiled ``insert_slices``).

    Parameters
    ----------
    slices
        ``(b, D, D // 2 + 1)`` complex half spectra, or real values (e.g. CTF² weights) for a real
        grid.
    rotations
        ``(b, 3, 3)`` RELION ``A``.
    padded
        ``P``, side of the padded 3D grid.
    grid_flat
        Flat extended grid (:meth:`ExtendedSpectrum.zeros`), complex or real, contiguous, CPU.
    """
    if not grid_flat.is_contiguous():
        raise ValueError("the accumulator must be contiguous")
    box_size = slices.shape[-2]  # (b, D, D // 2 + 1), complex or real
    src = slices.to(grid_flat.dtype).contiguous()
    src_real = torch.view_as_real(src) if src.is_complex() else src
    grid_real = torch.view_as_real(grid_flat) if grid_flat.is_complex() else grid_flat
    channels = 2 if grid_flat.is_complex() else 1
    _call("insert", rotations, box_size, padded, src_real, channels, grid_real)


def extract_slices(
    grid_flat: torch.Tensor, rotations: torch.Tensor, box_size: int, padded: int
) -> torch.Tensor:
    """Central slices ``(b, D, D // 2 + 1)`` of a flat extended grid (the compiled extraction)."""
    grid_flat = grid_flat.contiguous()
    grid_real = torch.view_as_real(grid_flat) if grid_flat.is_complex() else grid_flat
    channels = 2 if grid_flat.is_complex() else 1
    shape = (rotations.shape[0], box_size, box_size // 2 + 1)
    out = torch.zeros(shape + ((2,) if channels == 2 else ()), dtype=grid_real.dtype)
    _call("extract", rotations, box_size, padded, out, channels, grid_real)
    return torch.view_as_complex(out) if channels == 2 else out


class CpuSteps(TorchSteps):
    """Chunk steps on the compiled CPU loops (the torch reference's filters around them)."""

    def raw_extract(self, ext: torch.Tensor, geom: SliceGeometry) -> torch.Tensor:
        return extract_slices(ext, geom.rotations, geom.box_size, geom.padded)

    def raw_insert(self, slices: torch.Tensor, geom: SliceGeometry, acc: torch.Tensor) -> None:
        if not acc.is_contiguous():  # the loops add into the memory of a contiguous grid
            super().raw_insert(slices, geom, acc)
            return
        insert_slices(slices, geom.rotations, geom.padded, acc)
