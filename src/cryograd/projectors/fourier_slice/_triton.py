"""Triton Fourier-slice extraction and insertion, with CTF and shift fused in.

The math is that of :mod:`cryograd.projectors.fourier_slice.geometry` (read its docstring): the
half-grid sample ``(kx, ky)`` of a particle's ``D``-grid spectrum (``|k| <= D // 2``) sits at
``q = (P / D) · Aᵀ (kx, ky, 0)`` of the padded ``(P, P, P // 2 + 1)`` volume spectrum; a sample
with ``q_x < 0`` uses ``conj F(-q)``; ``kz``/``ky`` wrap periodically, the ``kx`` axis stops at
``P // 2``; ``q`` is clamped to the Nyquist sphere's bounding box (``q_x`` in ``[0, P/2]``, ``q_y``,
``q_z`` in ``[-P/2, P/2]``, as ``slice_geometry`` does, so that rounding never leaves the grid);
the value is trilinear in the 8 neighbours. Extraction gathers, insertion is its exact
transpose (scatter with the same weights, conjugated values for mirrored samples,
``tl.atomic_add``).

Fused into the same kernel, per sample and without any ``(b, D, D // 2 + 1)`` array:

- the CTF (RELION's formula, :mod:`cryograd.ctf`), computed from each particle's parameters
  (:meth:`CTFParams.as_tensor`, reduced on the host to 7 coefficients per particle), or read from a
  precomputed ``(b, D, D // 2 + 1)`` array when one is given;
- the shift: the forward model moves the projection by ``-origin`` (phase ramp
  ``exp(+2πi k·origin / D)``), insertion applies the transpose (``exp(-2πi k·origin / D)``);
- for insertion, the CTF² weights scattered with the same trilinear weights into a real grid (the
  ``direct`` method's normalisation); particles whose images are already CTF-multiplied
  (``premultiplied``) get no CTF on their values but keep CTF² as their weight.

So ``extract_slices`` returns ``T C S(F)`` (``S`` the central-slice sampling) and ``insert_slices``
accumulates ``Sᵀ(C Tᵀ y)`` (and ``Sᵀ(C²)``). Both accept the volume spectrum in the plain layout
``(P, P, P // 2 + 1)`` or the flat extended layout of :class:`~cryograd.projectors.fourier_slice.
geometry.ExtendedSpectrum` (``((P + 2)² (P // 2 + 2),)``), which the torch reference
accumulates into.

Insertion issues 8 corners × (re, im, weight) atomic adds per sample. On sm_90 and newer (float32,
compiled) the (re, im) pair goes out as one 8-byte vector reduction (``red.global.add.v2.f32``),
and with a :func:`packed_accumulator` the whole (re, im, weight) record as one 16-byte reduction
(``red.global.add.v4.f32``); elsewhere, and in the interpreter, plain ``tl.atomic_add``.
``CRYOGRAD_VECTOR_ATOMICS=0`` turns the vector reductions off.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from cryograd.ctf import CTFParams, electron_wavelength_angstrom
from cryograd.errors import CryogradError
from cryograd.projectors._launch import (
    allocate,
    check_inputs,
    device_guard,
    ensure_runnable,
    interleaved,
)
from cryograd.projectors.backend import interpreter_enabled, kernel_batch_size
from cryograd.projectors.base import ImageFilters
from cryograd.projectors.fourier_slice._torch import TorchSteps
from cryograd.projectors.fourier_slice.geometry import SliceGeometry
from cryograd.projectors.fourier_slice.projector import FourierSliceProjector

__all__ = [
    "ctf_coefficients",
    "extract_slices",
    "insert_slices",
    "packed_accumulator",
    "unpack_accumulator",
    "vector_atomics",
    "TritonSteps",
    "project",
    "backproject",
]

_BLOCK = 256
_CTF_NONE, _CTF_PARAMS, _CTF_ARRAY = 0, 1, 2
# Bits of the kernels' FLAGS constexpr (bits 0-1: the CTF mode).
_SHIFT, _WEIGHTS, _PREMULT, _SAMPLE_W, _EXTENDED, _PACKED, _VEC = 4, 8, 16, 32, 64, 128, 256


@triton.jit
def _sample_geometry(offs, b, rot_ptr, D, W, P):
    """Frequencies of the half-grid samples ``offs`` of particle ``b`` and their 3D positions."""
    row = offs // W
    col = offs % W
    kxi = col
    kyi = tl.where(row < (D + 1) // 2, row, row - D)
    half = D // 2
    inside = (offs < D * W) & (kxi * kxi + kyi * kyi <= half * half)
    r = rot_ptr + b * 9
    a00 = tl.load(r + 0)
    a01 = tl.load(r + 1)
    a02 = tl.load(r + 2)
    a10 = tl.load(r + 3)
    a11 = tl.load(r + 4)
    a12 = tl.load(r + 5)
    kx = kxi.to(a00.dtype)
    ky = kyi.to(a00.dtype)
    scale = P.to(a00.dtype) / D.to(a00.dtype)  # P / D rounded once, in the data's precision
    qx = scale * (kx * a00 + ky * a10)
    qy = scale * (kx * a01 + ky * a11)
    qz = scale * (kx * a02 + ky * a12)
    mirror = qx < 0.0
    qx = tl.where(mirror, -qx, qx)
    qy = tl.where(mirror, -qy, qy)
    qz = tl.where(mirror, -qz, qz)
    # Clamp to the Nyquist sphere's bounding box, qx in [0, P/2] and qy, qz in [-P/2, P/2], as
    # slice_geometry and the compiled CPU loops do: a rotation one ulp past orthonormal can put a
    # Nyquist sample at -P/2 - eps, whose floor would leave the extended layout (and the plain
    # layout's wrap). Written with where() so that a NaN also lands on a bound (no stray access).
    hf = (P // 2).to(a00.dtype)
    qx = tl.where(qx > 0.0, qx, 0.0)
    qx = tl.where(qx < hf, qx, hf)
    qy = tl.where(qy > -hf, qy, -hf)
    qy = tl.where(qy < hf, qy, hf)
    qz = tl.where(qz > -hf, qz, -hf)
    qz = tl.where(qz < hf, qz, hf)
    x0f = tl.floor(qx)
    y0f = tl.floor(qy)
    z0f = tl.floor(qz)
    fx = qx - x0f
    fy = qy - y0f
    fz = qz - z0f
    return kx, ky, inside, mirror, x0f.to(tl.int32), y0f.to(tl.int32), z0f.to(tl.int32), fx, fy, fz


@triton.jit
def _corner_index(
    x0, y0, z0, dx: tl.constexpr, dy: tl.constexpr, dz: tl.constexpr, P, EXTENDED: tl.constexpr
):
    """Flat element index of a trilinear corner and whether it lies on the grid."""
    W3 = P // 2 + 1
    if EXTENDED:
        # (P + 2, P + 2, P // 2 + 2) with ext[z, y] = F[(z - P // 2) mod P, (y - P // 2) mod P]
        h = P // 2
        idx = ((z0 + (h + dz)) * (P + 2) + (y0 + (h + dy))) * (W3 + 1) + (x0 + dx)
        ok = x0 >= 0  # always true: every corner has a slot
    else:
        zi = (z0 + (dz + P)) % P
        yi = (y0 + (dy + P)) % P
        idx = (zi * P + yi) * W3 + (x0 + dx)
        ok = (x0 + dx) < W3
    return idx, ok


@triton.jit
def _filter_values(
    kx, ky, b, inside, offs, ctf_ptr, shift_ptr, D, FLAGS: tl.constexpr, SHIFT_SIGN: tl.constexpr
):
    """CTF value and phase ramp ``exp(SHIFT_SIGN · 2πi k·origin / D)`` of each sample.

    ``ctf_ptr`` holds ``(b, 7)`` coefficients (CTF mode 1) or ``(b, D, D // 2 + 1)`` values (2).
    """
    if (FLAGS & 3) == 1:
        c = ctf_ptr + b * 7
        c_mean = tl.load(c + 0)
        c_cos = tl.load(c + 1)
        c_sin = tl.load(c + 2)
        c_4 = tl.load(c + 3)
        c_0 = tl.load(c + 4)
        c_b = tl.load(c + 5)
        c_scale = tl.load(c + 6)
        k2 = kx * kx + ky * ky
        defocus = c_mean * k2 + c_cos * (kx * kx - ky * ky) + c_sin * (2.0 * kx * ky)
        gamma = c_4 * (k2 * k2) - defocus - c_0
        ctf = -tl.sin(gamma) * tl.exp(-c_b * k2) * c_scale
    elif (FLAGS & 3) == 2:
        ctf = tl.load(ctf_ptr + b * (D * (D // 2 + 1)) + offs, mask=inside, other=0.0)
    else:
        ctf = kx * 0.0 + 1.0
    if FLAGS & 4:
        tx = tl.load(shift_ptr + b * 2)
        ty = tl.load(shift_ptr + b * 2 + 1)
        phase = (SHIFT_SIGN * 6.283185307179586) * (kx * tx + ky * ty) / D
        ramp_re = tl.cos(phase)
        ramp_im = tl.sin(phase)
    else:
        ramp_re = kx * 0.0 + 1.0
        ramp_im = kx * 0.0
    return ctf, ramp_re, ramp_im


@triton.jit
def _red_v2(ptr, a, b, mask):
    """``ptr[0] += a; ptr[1] += b`` as one 8-byte vector reduction (sm_90+, float32, aligned)."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $4, 0; "
        "@p red.relaxed.gpu.global.add.v2.f32 [$1], {$2, $3}; mov.u32 $0, 0; }",
        "=r,l,f,f,r",
        [ptr.to(tl.uint64, bitcast=True), a, b, mask.to(tl.int32)],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit
def _red_v4(ptr, a, b, c, mask):
    """``ptr[0:3] += (a, b, c)`` (and ``ptr[3] += 0``) as one 16-byte vector reduction (sm_90+)."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .f32 z; mov.f32 z, 0f00000000; setp.ne.b32 p, $5, 0; "
        "@p red.relaxed.gpu.global.add.v4.f32 [$1], {$2, $3, $4, z}; mov.u32 $0, 0; }",
        "=r,l,f,f,f,r",
        [ptr.to(tl.uint64, bitcast=True), a, b, c, mask.to(tl.int32)],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit(do_not_specialize=["D", "P"])
def _extract_kernel(
    spec_ptr,  # volume spectrum as interleaved floats (plain or extended layout)
    rot_ptr,  # (b, 3, 3)
    ctf_ptr,  # (b, 7) CTF coefficients (mode 1) or (b, D, W) CTF values (mode 2)
    shift_ptr,  # (b, 2) origins in pixels
    out_ptr,  # (b, D, W) complex as interleaved floats
    D,
    P,
    FLAGS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    W = D // 2 + 1
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    kx, ky, inside, mirror, x0, y0, z0, fx, fy, fz = _sample_geometry(offs, b, rot_ptr, D, W, P)
    acc_re = kx * 0.0
    acc_im = kx * 0.0
    for dz in tl.static_range(2):
        wz = fz if dz == 1 else 1.0 - fz
        for dy in tl.static_range(2):
            wzy = wz * (fy if dy == 1 else 1.0 - fy)
            for dx in tl.static_range(2):
                w = wzy * (fx if dx == 1 else 1.0 - fx)
                idx, ok = _corner_index(x0, y0, z0, dx, dy, dz, P, (FLAGS & 64) != 0)
                m = inside & ok
                acc_re += w * tl.load(spec_ptr + 2 * idx, mask=m, other=0.0)
                acc_im += w * tl.load(spec_ptr + 2 * idx + 1, mask=m, other=0.0)
    acc_im = tl.where(mirror, -acc_im, acc_im)
    ctf, ramp_re, ramp_im = _filter_values(
        kx, ky, b, inside, offs, ctf_ptr, shift_ptr, D, FLAGS, 1.0
    )
    f_re = ctf * ramp_re
    f_im = ctf * ramp_im
    out_re = acc_re * f_re - acc_im * f_im
    out_im = acc_re * f_im + acc_im * f_re
    in_grid = offs < D * W
    o = out_ptr + 2 * (b * D * W + offs)
    tl.store(o, tl.where(inside, out_re, 0.0), mask=in_grid)
    tl.store(o + 1, tl.where(inside, out_im, 0.0), mask=in_grid)


@triton.jit
def _scatter_corner(acc_ptr, wgt_ptr, idx, m, w, u_re, u_im, c2, FLAGS: tl.constexpr):
    """Add one trilinear corner's share of values (and CTF² weights) into the accumulators."""
    if FLAGS & 128:  # packed: one 16-byte (re, im, weight, 0) record per voxel
        if FLAGS & 256:
            _red_v4(acc_ptr + 4 * idx, w * u_re, w * u_im, w * c2, m)
        else:
            ch = tl.arange(0, 4)[None, :]
            rec = tl.where(ch == 2, (w * c2)[:, None], 0.0)
            rec = tl.where(ch == 1, (w * u_im)[:, None], rec)
            rec = tl.where(ch == 0, (w * u_re)[:, None], rec)
            tl.atomic_add(
                acc_ptr + (4 * idx)[:, None] + ch, rec, mask=m[:, None] & (ch >= 0), sem="relaxed"
            )
    else:
        if FLAGS & 256:
            _red_v2(acc_ptr + 2 * idx, w * u_re, w * u_im, m)
        else:
            tl.atomic_add(acc_ptr + 2 * idx, w * u_re, mask=m, sem="relaxed")
            tl.atomic_add(acc_ptr + 2 * idx + 1, w * u_im, mask=m, sem="relaxed")
        if FLAGS & 8:
            tl.atomic_add(wgt_ptr + idx, w * c2, mask=m, sem="relaxed")


@triton.jit(do_not_specialize=["D", "P"])
def _insert_kernel(
    slice_ptr,  # (b, D, W) complex as interleaved floats
    rot_ptr,  # (b, 3, 3)
    ctf_ptr,  # (b, 7) coefficients (mode 1) or (b, D, W) values (mode 2)
    shift_ptr,  # (b, 2)
    premult_ptr,  # (b,) int8 (FLAGS & _PREMULT)
    sw_ptr,  # (D, W) real factor of every sample (FLAGS & _SAMPLE_W)
    acc_ptr,  # volume accumulator, interleaved floats (plain or extended layout)
    wgt_ptr,  # real weight accumulator, same layout (FLAGS & _WEIGHTS)
    D,
    P,
    FLAGS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    W = D // 2 + 1
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    kx, ky, inside, mirror, x0, y0, z0, fx, fy, fz = _sample_geometry(offs, b, rot_ptr, D, W, P)
    s = slice_ptr + 2 * (b * D * W + offs)
    v_re = tl.load(s, mask=inside, other=0.0)
    v_im = tl.load(s + 1, mask=inside, other=0.0)
    ctf, ramp_re, ramp_im = _filter_values(
        kx, ky, b, inside, offs, ctf_ptr, shift_ptr, D, FLAGS, -1.0
    )
    c_val = ctf
    if FLAGS & 16:
        pre = tl.load(premult_ptr + b)
        c_val = tl.where(pre != 0, kx * 0.0 + 1.0, ctf)
    # value · CTF · conj(ramp(-origin)) = value · CTF · ramp(+origin)
    f_re = c_val * ramp_re
    f_im = c_val * ramp_im
    u_re = v_re * f_re - v_im * f_im
    u_im = v_re * f_im + v_im * f_re
    u_im = tl.where(mirror, -u_im, u_im)
    c2 = ctf * ctf
    if FLAGS & 32:
        sw = tl.load(sw_ptr + offs, mask=inside, other=0.0)
        u_re = u_re * sw
        u_im = u_im * sw
        c2 = c2 * sw
    for dz in tl.static_range(2):
        wz = fz if dz == 1 else 1.0 - fz
        for dy in tl.static_range(2):
            wzy = wz * (fy if dy == 1 else 1.0 - fy)
            for dx in tl.static_range(2):
                w = wzy * (fx if dx == 1 else 1.0 - fx)
                idx, ok = _corner_index(x0, y0, z0, dx, dy, dz, P, (FLAGS & 64) != 0)
                _scatter_corner(acc_ptr, wgt_ptr, idx, inside & ok, w, u_re, u_im, c2, FLAGS)


# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# host side


def ctf_coefficients(
    ctf: CTFParams | torch.Tensor, box_size: int, pixel_size_angstrom: float | torch.Tensor
) -> torch.Tensor:
    """Per-particle coefficients from which the kernels compute RELION's CTF at integer ``k``.

    With ``f = 1 / (D · pixel_size)`` and ``s = k f``, RELION's
    ``γ = −π λ Δf(θ) s² + (π/2) Cs λ³ s⁴ − φ − atan(Q0 / √(1 − Q0²))`` becomes
    ``γ = c4 k⁴ − (c_mean k² + c_cos (kx² − ky²) + c_sin 2 kx ky) − c0`` (as
    ``k² cos 2θ = kx² − ky²`` and ``k² sin 2θ = 2 kx ky``), and
    ``CTF = −sin γ · exp(−c_b k²) · scale``.

    Parameters
    ----------
    ctf
        ``b`` particles, as :class:`CTFParams` or its ``(b, 9)`` :meth:`CTFParams.as_tensor`.
    box_size
        ``D``.
    pixel_size_angstrom
        Pixel size in Å, one for all or ``(b,)`` (one per particle).

    Returns
    -------
    torch.Tensor
        ``(b, 7)`` float64: ``c_mean, c_cos, c_sin, c4, c0, c_b, scale``.
    """
    p = ctf.as_tensor() if isinstance(ctf, CTFParams) else ctf
    if p.dim() != 2 or p.shape[1] != 9:
        raise CryogradError(
            f"CTF parameters must be CTFParams or a (b, 9) tensor, got {tuple(p.shape)}"
        )
    p = p.to(torch.float64)
    dfu, dfv, ang, kv, cs_mm, q0, phase, bfac, scale = p.unbind(1)
    lam = electron_wavelength_angstrom(kv)
    apix = torch.as_tensor(pixel_size_angstrom, dtype=torch.float64, device=p.device)
    f2 = 1.0 / (box_size * apix.reshape(-1)) ** 2  # (1,) or (b,)
    c1 = math.pi * lam * f2
    two_ang = 2.0 * torch.deg2rad(ang)
    c_mean = c1 * 0.5 * (dfu + dfv)
    c_diff = c1 * 0.5 * (dfu - dfv)
    c4 = 0.5 * math.pi * (cs_mm * 1e7) * lam**3 * f2 * f2
    c0 = torch.deg2rad(phase) + torch.atan(q0 / torch.sqrt(1 - q0**2))
    cb = bfac * f2 / 4.0
    c_cos = c_diff * torch.cos(two_ang)
    c_sin = c_diff * torch.sin(two_ang)
    return torch.stack([c_mean, c_cos, c_sin, c4, c0, cb, scale], dim=1)


def vector_atomics(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether insertion uses PTX vector reductions (``red.global.add.v2/v4.f32``).

    NVIDIA sm_90 and newer, float32, compiled (not interpreted) kernels;
    ``CRYOGRAD_VECTOR_ATOMICS=0`` turns them off (scalar ``tl.atomic_add`` instead).
    """
    if os.environ.get("CRYOGRAD_VECTOR_ATOMICS", "1").strip() == "0":
        return False
    if device.type != "cuda" or dtype != torch.float32 or interpreter_enabled():
        return False
    if getattr(torch.version, "hip", None):
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def _ctf_device(ctf: CTFParams | torch.Tensor) -> torch.device:
    """Device of a CTF parameter batch."""
    return ctf.defocus_u_angstrom.device if isinstance(ctf, CTFParams) else ctf.device


def _padded_from_flat(n: int) -> int:
    """``P`` of a flat extended spectrum with ``(P + 2)² (P // 2 + 2)`` entries."""
    p = 2
    while (p + 2) ** 2 * (p // 2 + 2) < n:
        p += 2
    if (p + 2) ** 2 * (p // 2 + 2) != n:
        raise CryogradError(f"a flat spectrum of {n} entries is no extended (P+2)²(P/2+2) layout")
    return p


def _spectrum_layout(op: str, name: str, spec: torch.Tensor) -> tuple[int, bool]:
    """``(P, extended)`` of a volume spectrum in the plain or the flat extended layout."""
    if spec.dim() == 1:
        return _padded_from_flat(spec.shape[0]), True
    p = spec.shape[0]
    if spec.dim() != 3 or tuple(spec.shape) != (p, p, p // 2 + 1):
        raise CryogradError(
            f"{op}: {name} must be (P, P, P // 2 + 1) or flat extended, got {tuple(spec.shape)}"
        )
    return p, False


def _prepare_filters(
    op: str,
    b: int,
    box_size: int,
    device: torch.device,
    dtype: torch.dtype,
    ctf: CTFParams | torch.Tensor | None,
    shifts_px: torch.Tensor | None,
    pixel_size_angstrom: float | torch.Tensor | None,
) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """CTF mode, CTF coefficients or values, shifts, as contiguous tensors for the kernels."""
    dummy = torch.zeros(1, device=device, dtype=dtype)
    w = box_size // 2 + 1
    if ctf is None:
        mode, coef, values = _CTF_NONE, dummy, dummy
    elif isinstance(ctf, CTFParams) or (ctf.dim() == 2 and ctf.shape[-1] == 9):
        if pixel_size_angstrom is None:
            raise CryogradError(f"{op}: CTF parameters need pixel_size_angstrom")
        if len(ctf) != b:
            raise CryogradError(f"{op}: {len(ctf)} CTFs for {b} particles")
        apix = torch.as_tensor(pixel_size_angstrom, dtype=torch.float64)
        if apix.numel() not in (1, b):
            raise CryogradError(f"{op}: {apix.numel()} pixel sizes for {b} particles")
        coef = ctf_coefficients(ctf, box_size, apix.to(_ctf_device(ctf)))
        mode, coef, values = _CTF_PARAMS, coef.to(device=device, dtype=dtype).contiguous(), dummy
    else:
        if tuple(ctf.shape) != (b, box_size, w):
            raise CryogradError(
                f"{op}: CTF array has shape {tuple(ctf.shape)}, expected {(b, box_size, w)}"
            )
        mode, coef = _CTF_ARRAY, dummy
        values = ctf.to(device=device, dtype=dtype).contiguous()
    shifts = None
    if shifts_px is not None:
        shifts = torch.as_tensor(shifts_px).to(device=device, dtype=dtype).reshape(-1, 2)
        if shifts.shape[0] != b:
            raise CryogradError(f"{op}: {shifts.shape[0]} shifts for {b} particles")
        shifts = shifts.contiguous()
    return mode, coef, values, shifts


def _as_rotations(op: str, rotations: torch.Tensor, b: int | None, device, dtype) -> torch.Tensor:
    rot = torch.as_tensor(rotations)
    if rot.dim() != 3 or tuple(rot.shape[1:]) != (3, 3):
        raise CryogradError(f"{op}: rotations must have shape (B, 3, 3), got {tuple(rot.shape)}")
    if b is not None and rot.shape[0] != b:
        raise CryogradError(f"{op}: {rot.shape[0]} rotations for {b} slices")
    return rot.to(device=device, dtype=dtype).contiguous()


def extract_slices(
    spectrum: torch.Tensor,
    rotations: torch.Tensor,
    box_size: int,
    *,
    ctf: CTFParams | torch.Tensor | None = None,
    shifts_px: torch.Tensor | None = None,
    pixel_size_angstrom: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Central slices of a padded volume spectrum, with CTF and shift applied (Triton).

    Parameters
    ----------
    spectrum
        ``(P, P, P // 2 + 1)`` complex volume spectrum (``volume_spectrum``), or its flat extended
        layout ``((P + 2)² (P // 2 + 2),)``.
    rotations
        ``(b, 3, 3)`` RELION ``A`` (moved to the spectrum's device and real dtype).
    box_size
        ``D``, the side of the images.
    ctf
        None, :class:`CTFParams` of ``b`` particles (or its ``(b, 9)`` tensor), or CTF values
        ``(b, D, D // 2 + 1)``.
    shifts_px
        None or ``(b, 2)`` RELION origins in pixels: the slice is multiplied by the ramp that
        moves the projection by ``-origin``.
    pixel_size_angstrom
        Pixel size in Å (needed with CTF parameters): one, or ``(b,)`` one per particle.

    Returns
    -------
    torch.Tensor
        ``(b, D, D // 2 + 1)`` complex ``ramp(-origin) · CTF · slice``, zero outside
        ``|k| <= D // 2``.
    """
    op = "Fourier slice extraction"
    if not spectrum.is_complex():
        raise CryogradError(f"{op}: the volume spectrum must be complex, got {spectrum.dtype}")
    device, dtype = check_inputs(op, {"spectrum": spectrum})
    p, extended = _spectrum_layout(op, "spectrum", spectrum)
    d = int(box_size)
    w = d // 2 + 1
    rot = _as_rotations(op, rotations, None, device, dtype)
    b = rot.shape[0]
    mode, coef, values, shifts = _prepare_filters(
        op, b, d, device, dtype, ctf, shifts_px, pixel_size_angstrom
    )
    out = allocate(op, (b, d, w), device=device, dtype=spectrum.dtype, zero=False)
    if b == 0:
        return out
    spec = interleaved(spectrum.contiguous())
    grid = (b, triton.cdiv(d * w, _BLOCK))
    ensure_runnable(op, device)
    flags = mode | (_SHIFT if shifts is not None else 0) | (_EXTENDED if extended else 0)
    with device_guard(device):
        _extract_kernel[grid](
            spec,
            rot,
            values if mode == _CTF_ARRAY else coef,
            shifts if shifts is not None else coef,
            interleaved(out),
            d,
            p,
            FLAGS=flags,
            BLOCK=_BLOCK,
        )
    return out


def insert_slices(
    slices: torch.Tensor,
    rotations: torch.Tensor,
    accumulator: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    ctf: CTFParams | torch.Tensor | None = None,
    shifts_px: torch.Tensor | None = None,
    pixel_size_angstrom: float | torch.Tensor | None = None,
    premultiplied: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
) -> None:
    """Add the transposes of :func:`extract_slices` into a volume spectrum, in place (Triton).

    Accumulates ``Sᵀ(CTF · ramp(+origin) · slices)`` into ``accumulator`` and, if given,
    ``Sᵀ(CTF²)`` into ``weights``, with the same trilinear weights (``tl.atomic_add``).

    Parameters
    ----------
    slices
        ``(b, D, D // 2 + 1)`` complex half spectra on the ``D`` grid (samples outside
        ``|k| <= D // 2`` are ignored).
    rotations
        ``(b, 3, 3)`` RELION ``A``.
    accumulator
        Complex volume spectrum, ``(P, P, P // 2 + 1)`` or flat extended, contiguous, same device
        and precision as ``slices``; added to in place. Or a :func:`packed_accumulator`
        ``(P, P, P // 2 + 1, 4)`` real, which receives values and weights together
        (:func:`unpack_accumulator` splits them).
    weights
        None, or a real accumulator of the same layout for the CTF² weights (ones without CTF).
    ctf, shifts_px, pixel_size_angstrom
        As in :func:`extract_slices`.
    premultiplied
        None or ``(b,)`` bool: those particles' slices already carry their CTF; their values are not
        multiplied by it again (their weight is still CTF²).
    sample_weights
        None or real factors broadcastable to ``(D, D // 2 + 1)``, shared by all particles and
        applied to values and weights alike (e.g. ½ on the ``kx = 0`` column, a resolution mask).
    """
    op = "Fourier slice insertion"
    p, extended, packed = _check_accumulators(op, slices, accumulator, weights)
    device, dtype = slices.device, _real(slices)
    b, d, w = (int(s) for s in slices.shape)
    rot = _as_rotations(op, rotations, b, device, dtype)
    mode, coef, values, shifts = _prepare_filters(
        op, b, d, device, dtype, ctf, shifts_px, pixel_size_angstrom
    )
    premult = _premultiplied_flags(op, premultiplied, b, device)
    sw = _sample_weights(op, sample_weights, d, device, dtype)
    if b == 0:
        return
    grid = (b, triton.cdiv(d * w, _BLOCK))
    ensure_runnable(op, device)
    # vector reductions need 8-byte (complex) or 16-byte (packed) aligned records
    vec = vector_atomics(device, dtype) and accumulator.data_ptr() % (16 if packed else 8) == 0
    flags = mode
    for bit, on in (
        (_SHIFT, shifts is not None),
        (_WEIGHTS, weights is not None),
        (_PREMULT, premult is not None),
        (_SAMPLE_W, sw is not None),
        (_EXTENDED, extended),
        (_PACKED, packed),
        (_VEC, vec),
    ):
        flags |= bit if on else 0
    with device_guard(device):
        _insert_kernel[grid](
            interleaved(slices.contiguous()),
            rot,
            values if mode == _CTF_ARRAY else coef,
            shifts if shifts is not None else coef,
            premult if premult is not None else coef,
            sw if sw is not None else coef,
            interleaved(accumulator),
            weights if weights is not None else coef,
            d,
            p,
            FLAGS=flags,
            BLOCK=_BLOCK,
        )


def _real(t: torch.Tensor) -> torch.dtype:
    return t.real.dtype if t.is_complex() else t.dtype


def _check_accumulators(
    op: str, slices: torch.Tensor, accumulator: torch.Tensor, weights: torch.Tensor | None
) -> tuple[int, bool, bool]:
    """Validate insertion's slices and accumulators; ``(P, extended layout, packed)``."""
    packed = (
        isinstance(accumulator, torch.Tensor)
        and not accumulator.is_complex()
        and accumulator.dim() == 4
        and accumulator.shape[-1] == 4
    )
    if not slices.is_complex() or not (packed or accumulator.is_complex()):
        raise CryogradError(
            f"{op}: slices and accumulator must be complex (or the accumulator a "
            "packed_accumulator)"
        )
    data = {"slices": slices, "accumulator": accumulator}
    if weights is not None:
        data["weights"] = weights
    check_inputs(op, data)
    if packed:
        p, extended = accumulator.shape[0], False
        if tuple(accumulator.shape) != (p, p, p // 2 + 1, 4):
            raise CryogradError(
                f"{op}: a packed accumulator is (P, P, P // 2 + 1, 4), got "
                f"{tuple(accumulator.shape)}"
            )
        if weights is not None:
            raise CryogradError(
                f"{op}: a packed accumulator holds the weights itself; pass weights=None"
            )
    else:
        p, extended = _spectrum_layout(op, "accumulator", accumulator)
    if weights is not None and (weights.is_complex() or weights.shape != accumulator.shape):
        raise CryogradError(
            f"{op}: weights must be real with the accumulator's shape "
            f"{tuple(accumulator.shape)}, got {weights.dtype} "
            f"{tuple(weights.shape)}"
        )
    for name, t in (("accumulator", accumulator), ("weights", weights)):
        if t is not None and not t.is_contiguous():
            raise CryogradError(f"{op}: {name} must be contiguous (it is added to in place)")
    if slices.dim() != 3 or slices.shape[-1] != slices.shape[-2] // 2 + 1:
        raise CryogradError(f"{op}: slices must be (b, D, D // 2 + 1), got {tuple(slices.shape)}")
    return int(p), extended, packed


def _premultiplied_flags(op: str, premultiplied, b: int, device) -> torch.Tensor | None:
    """``(b,)`` int8 flags of CTF-premultiplied particles, or None."""
    if premultiplied is None:
        return None
    premult = torch.as_tensor(premultiplied).to(device=device, dtype=torch.int8).reshape(-1)
    if premult.shape[0] != b:
        raise CryogradError(f"{op}: {premult.shape[0]} premultiplied flags for {b} slices")
    return premult.contiguous()


def _sample_weights(op: str, sample_weights, d: int, device, dtype) -> torch.Tensor | None:
    """Per-sample factors broadcast to ``(D, D // 2 + 1)``, or None."""
    if sample_weights is None:
        return None
    w = d // 2 + 1
    sw = torch.as_tensor(sample_weights)
    try:
        if sw.is_complex():
            raise RuntimeError("complex")
        sw = torch.broadcast_to(sw, (d, w))
    except RuntimeError:
        raise CryogradError(
            f"{op}: sample_weights must be real and broadcast to "
            f"(D, D // 2 + 1) = {(d, w)}, got {sw.dtype} "
            f"{tuple(sw.shape)}"
        ) from None
    return sw.to(device=device, dtype=dtype).contiguous()


def packed_accumulator(
    padded: int, *, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Zeros ``(P, P, P // 2 + 1, 4)``: per voxel ``(re, im, weight, unused)`` for insertion.

    Values and CTF² weights of one voxel share a 16-byte record, so the insertion kernel updates
    them with one vector atomic (or four adds to one memory sector) instead of three scattered ones.
    """
    return torch.zeros((padded, padded, padded // 2 + 1, 4), device=device, dtype=dtype)


def unpack_accumulator(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a :func:`packed_accumulator` into the complex spectrum and the real weights."""
    data = torch.view_as_complex(packed[..., :2].contiguous())
    return data, packed[..., 2].contiguous()


class TritonSteps(TorchSteps):
    """Chunk steps on the Triton kernels: slice geometry, CTF and shift ramp fused in the kernel
    (the lazy :class:`SliceGeometry` is never expanded; only its rotations are read)."""

    def _kw(self, filters: ImageFilters) -> dict:
        return {
            "ctf": filters.ctf,
            "shifts_px": filters.shifts_px,
            "pixel_size_angstrom": filters.pixel_size_angstrom,
        }

    def extract(self, ext: torch.Tensor, geom: SliceGeometry, filters: ImageFilters):
        if filters.optics is not None:  # observation model: the torch steps' filters
            return super().extract(ext, geom, filters)
        return extract_slices(ext, geom.rotations, self.box_size, **self._kw(filters))

    def insert(self, spectra, geom: SliceGeometry, filters: ImageFilters, acc) -> None:
        if filters.optics is not None:
            super().insert(spectra, geom, filters, acc)
            return
        insert_slices(spectra, geom.rotations, acc, **self._kw(filters))


def _forced(box_size: int, pad: float, gridding: bool, batch_size: int | None):
    proj = FourierSliceProjector(box_size, pad=pad, gridding=gridding, batch_size=batch_size)
    size = proj.batch_size or kernel_batch_size(box_size)
    return proj, TritonSteps(box_size, proj.padded_size, proj.gridding, size)


def project(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    *,
    pad: float = 2.0,
    gridding: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """:func:`cryograd.projectors.fourier_slice.project` on the kernels whatever the device (the
    projector's one chunk loop with :class:`TritonSteps`); for tests and benchmarks."""
    if volume.dim() != 3 or len(set(volume.shape)) != 1:
        raise CryogradError(
            f"Fourier-slice projection: volume must be cubic (D, D, D), got {tuple(volume.shape)}"
        )
    proj, steps = _forced(volume.shape[-1], pad, gridding, batch_size)
    return proj.project(volume, torch.as_tensor(rotations), steps=steps)


def backproject(
    images: torch.Tensor,
    rotations: torch.Tensor,
    *,
    pad: float = 2.0,
    gridding: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Exact transpose of :func:`project` (kernels whatever the device)."""
    if images.dim() != 3 or images.shape[-1] != images.shape[-2]:
        raise CryogradError(
            "Fourier-slice back-projection: images must have shape (B, D, D), got "
            f"{tuple(images.shape)}"
        )
    proj, steps = _forced(images.shape[-1], pad, gridding, batch_size)
    return proj.backproject(images, torch.as_tensor(rotations), steps=steps)
