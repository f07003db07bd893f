"""Compiled CPU loops for Fourier-slice insertion and extraction (optional, loaded with ctypes).

The torch path (``_torch.py``) computes the slice geometry as
``(batch × samples)`` tensors and scatters each sample into its 8 trilinear corners with 8
``index_add_`` passes; on a CPU that is bound by memory traffic (about 140 particles/s at box 128,
``pad 2``, on one core). The C loops in ``_cpu_slices.c`` are the CPU counterpart of the Triton
kernels: the same geometry per sample, all 8 corners and all channels together, no temporaries.

They are used for CPU tensors when :func:`cryograd.projectors.backend.select_backend` answers
``"cpu"`` (the extension was built, ``CRYOGRAD_KERNELS`` is ``auto`` or ``cpu``). The tests compare
them with the torch reference. They run on ``torch.get_num_threads()`` threads (OpenMP, where the
extension was built with it): extraction splits the particles, insertion splits the grid into
slabs of planes so that no two threads add into one cell (see ``_cpu_slices.c``).
:func:`insert_weighted` is the CPU counterpart of the Triton insertion: RELION's CTF, the shift
ramp and the sample weights are computed in the loop from each particle's parameters, and values
and CTF² weights are added in one pass (no ``batch × D²`` CTF or ramp arrays). :func:`fold_packed`
splits its packed grid into the numerator and weights on all threads.
"""

from __future__ import annotations

import ctypes
import math
from functools import cache

import numpy as np
import torch

from cryograd.ctf import CTFParams, electron_wavelength_angstrom
from cryograd.optics.particles import ParticleOptics
from cryograd.projectors.backend import cpu_library, select_backend
from cryograd.projectors.fourier_slice._torch import TorchSteps
from cryograd.projectors.fourier_slice.geometry import (
    SliceGeometry,
    extended_strides,
    slice_sample_positions,
)

__all__ = [
    "available",
    "usable",
    "openmp",
    "insert_slices",
    "extract_slices",
    "insert_weighted",
    "fold_packed",
    "host_empty",
    "particle_parameters",
    "CpuSteps",
]

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_CTYPE = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}
#: Doubles per particle in :func:`particle_parameters` (``NPAR`` in ``_cpu_slices.c``).
NPAR = 24
#: Doubles per slice sample and optics group in the tables of :func:`insert_weighted`.
NTAB = 4


@cache
def _library() -> ctypes.CDLL | None:
    lib = cpu_library("fourier_slice")
    if lib is None:
        return None
    for dtype, suffix in _SUFFIX.items():
        for name in ("insert", "extract"):
            fn = getattr(lib, f"cryograd_{name}_{suffix}")
            # (dims[8], rot, kx, ky, flat, slices, scale, grid, threads); dims: _cpu_slices.c
            fn.argtypes = [ctypes.c_void_p] * 6 + [_CTYPE[dtype], ctypes.c_void_p, ctypes.c_int]
            fn.restype = None
        fn = getattr(lib, f"cryograd_insert_weighted_{suffix}")
        # (dims, rot, kx, ky, flat, spectra, params, tables, sw, scale, num, wts, threads)
        fn.argtypes = [ctypes.c_void_p] * 9 + [_CTYPE[dtype]] + [ctypes.c_void_p] * 2
        fn.argtypes += [ctypes.c_int]
        fn.restype = None
        fn = getattr(lib, f"cryograd_fold_packed_{suffix}")
        # (padded, packed, num, wts, threads)
        fn.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_int]
        fn.restype = None
    lib.cryograd_openmp.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether the compiled loops were built and load."""
    return _library() is not None


def openmp() -> bool:
    """Whether the compiled loops were built with OpenMP (several threads)."""
    lib = _library()
    return lib is not None and bool(lib.cryograd_openmp())


def threads() -> int:
    """Threads the loops run on: ``torch.get_num_threads()`` (``--threads``)."""
    return max(1, int(torch.get_num_threads()))


def usable(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (32/64-bit) takes the compiled loops (:func:`select_backend`: ``cpu``)."""
    real = tensor.real.dtype if tensor.is_complex() else tensor.dtype
    if real not in _SUFFIX:
        return False
    return select_backend(tensor.device, "fourier_slice") == "cpu"


@cache
def _positions(box_size: int, dtype: torch.dtype):
    """:func:`slice_sample_positions` (on the CPU), kept per box and dtype."""
    return slice_sample_positions(box_size, dtype=dtype)


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _call(name: str, rotations, box_size, padded, slices_real, channels, grid_real) -> None:
    dtype = grid_real.dtype
    rot = rotations.to(dtype).contiguous()
    kx, ky, flat = _positions(box_size, dtype)
    sz, sy = extended_strides(padded)
    fn = getattr(_library(), f"cryograd_{name}_{_SUFFIX[dtype]}")
    dims = torch.tensor(
        [
            rot.shape[0],
            kx.numel(),
            box_size * (box_size // 2 + 1),
            channels,
            1 if channels in (2, 3) else -1,  # (re, im[, weight]): im conjugated
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
        threads(),
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


def extract_channels(
    grid_real: torch.Tensor, rotations: torch.Tensor, box_size: int, padded: int, channels: int
) -> torch.Tensor:
    """Central slices ``(b, D, D // 2 + 1, channels)`` of a flat extended real grid of
    ``channels`` values per cell (``(re, im)`` or ``(re, im, weight)``: the second one is
    conjugated on the mirrored half), in one pass of the compiled extraction."""
    grid_real = grid_real.contiguous()
    out = torch.zeros(
        (rotations.shape[0], box_size, box_size // 2 + 1, channels), dtype=grid_real.dtype
    )
    _call("extract", rotations, box_size, padded, out, channels, grid_real)
    return out


def particle_parameters(
    n: int,
    box_size: int,
    *,
    ctf: CTFParams | None = None,
    shifts_px: torch.Tensor | None = None,
    pixel_size_angstrom: float | torch.Tensor | None = None,
    premultiplied: torch.Tensor | None = None,
    optics: ParticleOptics | None = None,
) -> torch.Tensor:
    """The ``(n, NPAR)`` float64 per-particle table of :func:`insert_weighted`.

    Columns (``enum`` in ``_cpu_slices.c``): origin ``tx, ty`` (px); ``(dfU + dfV) / 2``,
    ``(dfU − dfV) / 2`` (Å); ``cos 2α, sin 2α`` of the defocus angle; the CTF phase
    ``γ = C1 · Δf · s² + C2 · s⁴ − C0`` (``C1 = −πλ``, ``C2 = π Cs λ³ / 2``, ``C0`` phase shift +
    amplitude-contrast phase); ``−B / 4`` and the scale of the envelope; ``1 / (D · pixel size)``
    (1/Å per grid step); flags (1: has a CTF, 2: premultiplied, 4/8/16: the CTF switches of
    :class:`cryograd.ctf.CtfSwitches`); the magnification ``M00, M01, M10, M11`` the CTF's
    frequency is taken at (``s = M k / (D · pixel size)``); the row of the particle's optics
    group in the tables of :func:`insert_weighted` (−1: none). The same formula as
    :func:`cryograd.ctf.ctf_from_frequencies`.
    """
    out = torch.zeros((n, NPAR), dtype=torch.float64)
    out[:, 13] = 1.0
    out[:, 16] = 1.0
    out[:, 17] = -1.0
    if shifts_px is not None:
        out[:, 0:2] = shifts_px.detach().to("cpu", torch.float64).reshape(n, 2)
    if optics is not None:
        out[:, 13:17] = optics.ctf_magnification().reshape(n, 4)
        out[:, 17] = optics.group.to("cpu", torch.float64)
        pixel_size_angstrom = optics.pixel_size_angstrom[optics.group.cpu()]
    if ctf is None:
        return out
    p = ctf.to(device="cpu", dtype=torch.float64)
    lam = electron_wavelength_angstrom(p.voltage_kv)
    q0 = p.amplitude_contrast
    ang = torch.deg2rad(p.defocus_angle_degrees)
    out[:, 2] = 0.5 * (p.defocus_u_angstrom + p.defocus_v_angstrom)
    out[:, 3] = 0.5 * (p.defocus_u_angstrom - p.defocus_v_angstrom)
    out[:, 4], out[:, 5] = torch.cos(2 * ang), torch.sin(2 * ang)
    out[:, 6] = -math.pi * lam
    out[:, 7] = 0.5 * math.pi * (p.spherical_aberration_mm * 1e7) * lam**3
    out[:, 8] = torch.deg2rad(p.phase_shift_degrees) + torch.atan(q0 / torch.sqrt(1 - q0**2))
    out[:, 9] = -p.b_factor / 4.0
    out[:, 10] = p.scale
    apix = torch.as_tensor(pixel_size_angstrom, dtype=torch.float64).reshape(-1)
    out[:, 11] = 1.0 / (box_size * apix.expand(n))
    flags = torch.ones(n, dtype=torch.float64)
    if premultiplied is not None:
        flags += 2.0 * torch.as_tensor(premultiplied).to("cpu").reshape(-1).double()
    if optics is not None:
        flags += float(optics.switches.flags())
    out[:, 12] = flags
    return out


def insert_weighted(
    spectra: torch.Tensor,
    rotations: torch.Tensor,
    params: torch.Tensor,
    sample_weights: torch.Tensor | None,
    padded: int,
    accumulator: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    optics: ParticleOptics | None = None,
) -> None:
    """Add ``Sᵀ(w · c · ramp(+origin) · spectra)`` and ``Sᵀ(w · c²)`` into flat extended grids.

    The compiled counterpart of the torch path of
    :meth:`~cryograd.projectors.fourier_slice.projector.FourierSliceProjector.insert` (``c`` is
    1 in the values of premultiplied particles and everywhere without CTF).

    Parameters
    ----------
    spectra
        ``(b, D, D // 2 + 1)`` complex half spectra.
    rotations
        ``(b · G, 3, 3)`` RELION ``A``; pose ``i`` inserts spectrum ``i // G`` (``G`` symmetry
        copies per particle, particle-major).
    params
        ``(b, NPAR)`` float64, :func:`particle_parameters`.
    sample_weights
        None or real factors broadcastable to ``(D, D // 2 + 1)``.
    padded
        ``P``.
    accumulator, weights
        Flat extended grids (:meth:`ExtendedSpectrum.zeros`): complex, and real or None;
        contiguous, CPU, the spectra's precision. Or a packed real ``accumulator``
        (:meth:`ExtendedSpectrum.zeros_packed`) that receives values and weights together
        (``weights`` is then ignored).
    optics
        None, or the particles' :class:`~cryograd.optics.particles.ParticleOptics` (the one
        :func:`particle_parameters` was given): its per-group tables
        (:meth:`~cryograd.optics.particles.ParticleOptics.sample_tables`) demodulate each sample
        by ``exp(−iφ)``, add the even offset to ``γ`` and drop samples beyond Nyquist;
        ``rotations`` are then its slice matrices.
    """
    if not accumulator.is_contiguous() or (weights is not None and not weights.is_contiguous()):
        raise ValueError("the accumulators must be contiguous")
    packed = not accumulator.is_complex()
    real = accumulator.real.dtype
    cdtype = torch.complex128 if real == torch.float64 else torch.complex64
    b, d, w = spectra.shape
    group = rotations.shape[0] // max(b, 1)
    if group * b != rotations.shape[0]:
        raise ValueError("rotations must hold a whole number of poses per spectrum")
    kx, ky, flat = _positions(d, real)
    sw = torch.ones((d, w), dtype=real)
    if sample_weights is not None:
        sw = sw * torch.as_tensor(sample_weights).to("cpu", real)
    sw = sw.reshape(-1)[flat].contiguous()
    src = torch.view_as_real(spectra.to(cdtype).contiguous())
    rot = rotations.to(real).contiguous()
    prm = params.to("cpu", torch.float64).contiguous()
    sz, sy = extended_strides(padded)
    dims = torch.tensor(
        [rot.shape[0], kx.numel(), d * w, group, padded // 2, sz, sy, d, int(packed)],
        dtype=torch.int64,
    )
    tables = None if optics is None else optics.sample_tables(flat, d)
    fn = getattr(_library(), f"cryograd_insert_weighted_{_SUFFIX[real]}")
    fn(
        _ptr(dims),
        _ptr(rot),
        _ptr(kx),
        _ptr(ky),
        _ptr(flat),
        _ptr(src),
        _ptr(prm),
        None if tables is None else _ptr(tables),
        _ptr(sw),
        padded / d,
        _ptr(accumulator),
        None if weights is None or packed else _ptr(weights),
        threads(),
    )


def fold_packed(packed: torch.Tensor, padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`ExtendedSpectrum.fold_packed` in the compiled loop, on all threads.

    Parameters
    ----------
    packed
        Flat packed accumulator (:meth:`ExtendedSpectrum.zeros_packed`): ``(P + 2)² (P // 2 + 2)``
        ``(re, im, weight)`` real triples, contiguous, CPU, float32 or float64.
    padded
        ``P``.

    Returns
    -------
    numerator, weights
        ``(P, P, P // 2 + 1)`` complex and real, each cell the sum of the extended cells that
        wrap onto it, added in the order of the torch fold (the same values to the last bit).
    """
    if not packed.is_contiguous():
        raise ValueError("the accumulator must be contiguous")
    real = packed.dtype
    cdtype = torch.complex128 if real == torch.float64 else torch.complex64
    shape = (padded, padded, padded // 2 + 1)
    num, wts = host_empty(shape, cdtype), host_empty(shape, real)
    fn = getattr(_library(), f"cryograd_fold_packed_{_SUFFIX[real]}")
    fn(padded, _ptr(packed), _ptr(num), _ptr(wts), threads())
    return num, wts


def host_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor from NumPy's allocator, which asks the kernel for huge pages
    for large arrays (``madvise``): the first writes into a fresh 100 MB grid then fault a few
    dozen pages instead of some 25,000 (box 128, ``pad 2``: about 0.06 s less per fold).

    Parameters
    ----------
    shape
        The tensor's shape.
    dtype
        A real or complex torch dtype with a NumPy counterpart (float32/64, complex64/128).
    """
    return torch.from_numpy(np.empty(shape, dtype=str(dtype).removeprefix("torch.")))


class CpuSteps(TorchSteps):
    """Chunk steps on the compiled CPU loops (the torch reference's filters around them)."""

    def raw_extract(self, ext: torch.Tensor, geom: SliceGeometry) -> torch.Tensor:
        return extract_slices(ext, geom.rotations, geom.box_size, geom.padded)

    def raw_insert(self, slices: torch.Tensor, geom: SliceGeometry, acc: torch.Tensor) -> None:
        if not acc.is_contiguous():  # the loops add into the memory of a contiguous grid
            super().raw_insert(slices, geom, acc)
            return
        insert_slices(slices, geom.rotations, geom.padded, acc)
