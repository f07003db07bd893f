"""Triton real-space projector and its exact transpose.

Geometry (CONVENTIONS.md, and :mod:`cryograd.projectors.real_space.geometry`): a volume
``[z, y, x]`` of
side ``D``; voxel ``(i, j, k)`` sits at ``r = (k, j, i) - D // 2``; for a particle with RELION
matrix ``A`` its image point is ``p = (A r)[:2] + D // 2`` (``p = (x, y)``, image ``[y, x]``), and
its value is spread over the 4 neighbouring pixels with bilinear weights. Pixels outside the image
are dropped.

- :func:`project`: voxel-driven; one program per block of voxels and group of particles, the
  voxel values loaded once and scattered into every particle's image with ``tl.atomic_add``.
- :func:`backproject`: the transpose; every voxel gathers the same 4 pixels with the same weights
  from every particle, accumulated in registers (no atomics).

Importing this module imports Triton and defines the kernels; set ``TRITON_INTERPRET=1`` before the
first import to run them on the CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from cryograd.errors import CryogradError
from cryograd.projectors._launch import allocate, check_inputs, device_guard, ensure_runnable
from cryograd.projectors.real_space._torch import TorchSteps

__all__ = ["project", "backproject", "TritonSteps"]

_BLOCK_PROJECT = 256
_PARTICLES_PER_PROGRAM = 4
_BLOCK_BACKPROJECT = 256


@triton.jit
def _image_point(r, x, y, z, c, D):
    """Bilinear footprint of voxels ``(x, y, z)`` (centred) under the rotation at ``r``.

    Returns the 4 neighbouring pixels' corners ``x0, y0, x1 = x0 + 1, y1 = y0 + 1`` (int32), the
    fractional offsets ``fx, fy`` and the in-image masks ``mx0, mx1, my0, my1`` of each corner.
    """
    a00 = tl.load(r + 0)
    a01 = tl.load(r + 1)
    a02 = tl.load(r + 2)
    a10 = tl.load(r + 3)
    a11 = tl.load(r + 4)
    a12 = tl.load(r + 5)
    px = a00 * x + a01 * y + a02 * z + c
    py = a10 * x + a11 * y + a12 * z + c
    x0f = tl.floor(px)
    y0f = tl.floor(py)
    fx = px - x0f
    fy = py - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    x1 = x0 + 1
    y1 = y0 + 1
    mx0 = (x0 >= 0) & (x0 < D)
    mx1 = (x1 >= 0) & (x1 < D)
    my0 = (y0 >= 0) & (y0 < D)
    my1 = (y1 >= 0) & (y1 < D)
    return x0, y0, x1, y1, fx, fy, mx0, mx1, my0, my1


@triton.jit(do_not_specialize=["n_particles", "D"])
def _project_kernel(
    vol_ptr,  # (D, D, D) contiguous
    rot_ptr,  # (B, 3, 3) contiguous, data dtype
    out_ptr,  # (B, D, D) contiguous, zeroed
    n_particles,
    D,
    BLOCK: tl.constexpr,
    PARTICLES: tl.constexpr,
):
    pid_v = tl.program_id(0)
    pid_b = tl.program_id(1)
    n_vox = D * D * D
    offs = pid_v * BLOCK + tl.arange(0, BLOCK)
    in_vol = offs < n_vox
    val = tl.load(vol_ptr + offs, mask=in_vol, other=0.0)
    live = in_vol & (val != 0.0)  # a zero voxel adds nothing: skip its atomics
    centre = D // 2
    x = ((offs % D) - centre).to(val.dtype)
    y = (((offs // D) % D) - centre).to(val.dtype)
    z = ((offs // (D * D)) - centre).to(val.dtype)
    c = centre.to(val.dtype)
    for q in tl.static_range(PARTICLES):
        b = pid_b * PARTICLES + q
        ok = (offs * 0 + b) < n_particles  # vector mask (a scalar one upsets the interpreter)
        bb = tl.minimum(b, n_particles - 1).to(tl.int64)
        r = rot_ptr + bb * 9
        x0, y0, x1, y1, fx, fy, mx0, mx1, my0, my1 = _image_point(r, x, y, z, c, D)
        m = live & ok
        img = out_ptr + bb * D * D
        gx = 1.0 - fx
        gy = 1.0 - fy
        tl.atomic_add(img + y0 * D + x0, val * gy * gx, mask=m & my0 & mx0, sem="relaxed")
        tl.atomic_add(img + y0 * D + x1, val * gy * fx, mask=m & my0 & mx1, sem="relaxed")
        tl.atomic_add(img + y1 * D + x0, val * fy * gx, mask=m & my1 & mx0, sem="relaxed")
        tl.atomic_add(img + y1 * D + x1, val * fy * fx, mask=m & my1 & mx1, sem="relaxed")


@triton.jit(do_not_specialize=["n_particles", "D"])
def _backproject_kernel(
    img_ptr,  # (B, D, D) contiguous
    rot_ptr,  # (B, 3, 3) contiguous, data dtype
    out_ptr,  # (D, D, D) contiguous
    n_particles,
    D,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    n_vox = D * D * D
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    in_vol = offs < n_vox
    zero = tl.zeros([BLOCK], dtype=out_ptr.dtype.element_ty)
    centre = D // 2
    x = ((offs % D) - centre).to(zero.dtype)
    y = (((offs // D) % D) - centre).to(zero.dtype)
    z = ((offs // (D * D)) - centre).to(zero.dtype)
    c = centre.to(zero.dtype)
    plane = (D * D).to(tl.int64)
    acc = zero
    for b in range(n_particles):
        r = rot_ptr + b * 9
        x0, y0, x1, y1, fx, fy, mx0, mx1, my0, my1 = _image_point(r, x, y, z, c, D)
        my0 = in_vol & my0
        my1 = in_vol & my1
        img = img_ptr + b * plane
        v00 = tl.load(img + y0 * D + x0, mask=my0 & mx0, other=0.0)
        v01 = tl.load(img + y0 * D + x1, mask=my0 & mx1, other=0.0)
        v10 = tl.load(img + y1 * D + x0, mask=my1 & mx0, other=0.0)
        v11 = tl.load(img + y1 * D + x1, mask=my1 & mx1, other=0.0)
        acc += (1.0 - fy) * ((1.0 - fx) * v00 + fx * v01) + fy * ((1.0 - fx) * v10 + fx * v11)
    tl.store(out_ptr + offs, acc, mask=in_vol)


def _check_rotations(op: str, rotations: torch.Tensor, n: int | None) -> None:
    if rotations.dim() != 3 or rotations.shape[-2:] != (3, 3):
        raise CryogradError(
            f"{op}: rotations must have shape (B, 3, 3), got {tuple(rotations.shape)}"
        )
    if n is not None and rotations.shape[0] != n:
        raise CryogradError(f"{op}: {rotations.shape[0]} rotations for {n} images")


def project(
    volume: torch.Tensor, rotations: torch.Tensor, *, batch_size: int | None = None
) -> torch.Tensor:
    """Real-space projections of a volume (Triton, voxel-driven, bilinear splatting).

    Parameters
    ----------
    volume
        ``(D, D, D)`` real, ``[z, y, x]``, float32 or float64.
    rotations
        ``(B, 3, 3)`` RELION ``A`` matrices (moved to the volume's device and dtype).
    batch_size
        Accepted for compatibility with the torch reference and ignored: the kernel needs no
        chunking (its memory is the ``(B, D, D)`` output).

    Returns
    -------
    torch.Tensor
        ``(B, D, D)`` images ``[y, x]``, the volume's dtype and device.
    """
    op = "real-space projection"
    if volume.dim() != 3 or len(set(volume.shape)) != 1:
        raise CryogradError(f"{op}: volume must be cubic (D, D, D), got {tuple(volume.shape)}")
    _check_rotations(op, rotations, None)
    device, dtype = check_inputs(op, {"volume": volume})
    d = int(volume.shape[-1])
    n = int(rotations.shape[0])
    out = allocate(op, (n, d, d), device=device, dtype=dtype)
    if n == 0:
        return out
    vol = volume.contiguous()
    rot = rotations.to(device=device, dtype=dtype).contiguous()
    ensure_runnable(op, device)
    # the grid's second axis is limited to 65535 programs: launch in chunks of particles
    step = 65535 * _PARTICLES_PER_PROGRAM
    with device_guard(device):
        for start in range(0, n, step):
            m = min(step, n - start)
            grid = (triton.cdiv(d**3, _BLOCK_PROJECT), triton.cdiv(m, _PARTICLES_PER_PROGRAM))
            _project_kernel[grid](
                vol,
                rot[start:],
                out[start:],
                m,
                d,
                BLOCK=_BLOCK_PROJECT,
                PARTICLES=_PARTICLES_PER_PROGRAM,
            )
    return out


def backproject(
    images: torch.Tensor, rotations: torch.Tensor, *, batch_size: int | None = None
) -> torch.Tensor:
    """Exact transpose of :func:`project` (Triton, per-voxel bilinear gather, no atomics).

    Parameters
    ----------
    images
        ``(B, D, D)`` real images ``[y, x]``, float32 or float64.
    rotations
        ``(B, 3, 3)`` RELION ``A`` matrices (moved to the images' device and dtype).
    batch_size
        Ignored (see :func:`project`).

    Returns
    -------
    torch.Tensor
        ``(D, D, D)`` volume ``[z, y, x]``, the images' dtype and device.
    """
    op = "real-space back-projection"
    if images.dim() != 3 or images.shape[-1] != images.shape[-2]:
        raise CryogradError(f"{op}: images must have shape (B, D, D), got {tuple(images.shape)}")
    n = int(images.shape[0])
    _check_rotations(op, rotations, n)
    device, dtype = check_inputs(op, {"images": images})
    d = int(images.shape[-1])
    out = allocate(op, (d, d, d), device=device, dtype=dtype, zero=False)
    if n == 0:
        return out.zero_()
    img = images.contiguous()
    rot = rotations.to(device=device, dtype=dtype).contiguous()
    grid = (triton.cdiv(d**3, _BLOCK_BACKPROJECT),)
    ensure_runnable(op, device)
    with device_guard(device):
        _backproject_kernel[grid](img, rot, out, n, d, BLOCK=_BLOCK_BACKPROJECT)
    return out


class TritonSteps(TorchSteps):
    """Chunk steps on the Triton kernels (the geometry is the rotations: computed in-kernel)."""

    def geometry(self, rotations: torch.Tensor) -> torch.Tensor:
        return rotations

    def raw_project(self, volume: torch.Tensor, geom: torch.Tensor) -> torch.Tensor:
        return project(volume, geom)

    def raw_backproject(self, images: torch.Tensor, geom: torch.Tensor) -> torch.Tensor:
        return backproject(images, geom)
