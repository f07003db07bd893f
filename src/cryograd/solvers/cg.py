"""Conjugate gradients on the regularised normal equations ``(AᵀA + λI) x = Aᵀb``.

``A`` is the forward model of :class:`cryograd.forward.ForwardModel` (shift, CTF, projector). Two
ways to apply ``AᵀA``:

* Fourier projector — a Toeplitz (convolution) operator, built once from the data as ASPIRE does:
  ``AᵀA x = crop(irfftn(K · rfftn(pad(x))))`` on the ``M = 2D`` grid, whose kernel
  ``k(d) = (1/D²) Σ_i Σ_k c_ik² exp(2πi (A_iᵀ k)·d / D)`` (``d`` a voxel offset, ``k`` the image
  samples, ``c`` the CTF) is the non-uniform DFT of the CTF² weights. The weights are inserted onto
  the ``M`` grid by the Fourier-slice back-projector's scatter (positions ``q = (M/D) Aᵀk``), inverse
  transformed, and divided by the trilinear window ``sinc²(d/M)``. Every iteration then costs two
  FFTs of ``M³``, whatever the number of particles. ``Aᵀb`` comes from the same insertion sums as
  the direct method (:func:`cryograd.solvers.direct.insert_particles`).
* Real-space projector — ``A`` and ``Aᵀ`` applied particle by particle in every iteration.

Each process contributes its shard of the particles to ``Aᵀb`` and to the kernel (or to each
``AᵀA x``), summed with ``comm.all_reduce_sum_``; the iterations themselves are replicated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from cryograd.fourier import irfftn_centered
from cryograd.projectors import fourier_slice as fs
from cryograd.solvers.batches import expand_symmetry, global_batches, load_batch
from cryograd.solvers.direct import FourierInsertion, insert_particles

__all__ = [
    "CGResult",
    "conjugate_gradient",
    "ToeplitzNormalOperator",
    "toeplitz_from_weights",
    "normal_rhs_from_insertion",
    "RealSpaceNormalOperator",
    "solve_cg",
]

logger = logging.getLogger(__name__)


@dataclass
class CGResult:
    """Solution and convergence record of :func:`conjugate_gradient`.

    Attributes
    ----------
    x
        The solution.
    iterations
        Iterations run.
    converged
        Whether the relative residual fell below the tolerance.
    residuals
        Relative residual ``‖r_k‖ / ‖b‖`` after each iteration (``residuals[0]`` at the start).
    """

    x: torch.Tensor
    iterations: int
    converged: bool
    residuals: list[float] = field(default_factory=list)


def conjugate_gradient(
    apply_operator: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 200,
    progress: bool = False,
) -> CGResult:
    """Solve ``H x = rhs`` for a symmetric positive definite ``H`` given as a function.

    Parameters
    ----------
    apply_operator
        ``x -> H x`` (same shape as ``rhs``).
    rhs
        Right-hand side (any shape).
    x0
        Starting point (default zeros).
    tol
        Stop when ``‖rhs − H x‖ ≤ tol · ‖rhs‖``.
    max_iter
        Iteration limit.
    progress
        Show a tqdm bar over iterations.

    Returns
    -------
    CGResult
    """
    work = torch.float64 if rhs.dtype == torch.float64 else rhs.dtype
    b = rhs.to(work)
    x = torch.zeros_like(b) if x0 is None else x0.to(work).clone()
    r = b - apply_operator(x) if x0 is not None else b.clone()
    b_norm = float(torch.linalg.vector_norm(b))
    if b_norm == 0:
        return CGResult(torch.zeros_like(b), 0, True, [0.0])
    p = r.clone()
    rs_old = float((r * r).sum())
    residuals = [rs_old**0.5 / b_norm]
    converged = residuals[0] <= tol
    it = 0
    bar = tqdm(total=max_iter, desc="cg", unit="it", disable=not progress, leave=False)
    try:
        while not converged and it < max_iter:
            hp = apply_operator(p)
            denom = float((p * hp).sum())
            if denom <= 0:
                logger.warning("CG: operator is not positive definite along a search direction")
                break
            alpha = rs_old / denom
            x = x + alpha * p
            r = r - alpha * hp
            rs_new = float((r * r).sum())
            it += 1
            residuals.append(rs_new**0.5 / b_norm)
            bar.update(1)
            bar.set_postfix(residual=f"{residuals[-1]:.2e}")
            if residuals[-1] <= tol:
                converged = True
                break
            p = r + (rs_new / rs_old) * p
            rs_old = rs_new
    finally:
        bar.close()
    return CGResult(x.to(rhs.dtype), it, converged, residuals)


def _sinc2_window(size: int, box: int, device, dtype) -> torch.Tensor:
    """``sinc²(d_x/M) sinc²(d_y/M) sinc²(d_z/M)`` on the unshifted ``(M, M, M)`` offset grid."""
    d = torch.fft.fftfreq(size, d=1.0 / size, device=device, dtype=torch.float64)
    w = torch.sinc(d / size) ** 2
    return (w.view(-1, 1, 1) * w.view(1, -1, 1) * w.view(1, 1, -1)).to(dtype)


class ToeplitzNormalOperator:
    """``x -> AᵀA x + λ x`` as a convolution on the ``M = 2D`` grid (see module doc).

    Parameters
    ----------
    kernel_spectrum
        ``(M, M, M // 2 + 1)`` real spectrum ``K`` of the kernel (unshifted offsets).
    box_size
        ``D``.
    lam
        ``λ``.
    """

    def __init__(self, kernel_spectrum: torch.Tensor, box_size: int, lam: float = 0.0) -> None:
        self.kernel_spectrum = kernel_spectrum
        self.box_size = int(box_size)
        self.size = kernel_spectrum.shape[0]
        self.lam = float(lam)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``AᵀA x`` (without ``λ``)."""
        d, m = self.box_size, self.size
        padded = x.new_zeros((m, m, m))
        padded[:d, :d, :d] = x
        spec = torch.fft.rfftn(padded) * self.kernel_spectrum.to(x.dtype)
        return torch.fft.irfftn(spec, s=(m, m, m))[:d, :d, :d].contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.normal(x) + self.lam * x


def toeplitz_from_weights(weights: torch.Tensor, box_size: int) -> torch.Tensor:
    """Kernel spectrum ``K`` of ``AᵀA`` from the CTF² weights inserted on the ``M = 2D`` grid.

    Parameters
    ----------
    weights
        ``(M, M, M // 2 + 1)`` real full-grid weight sums of :func:`insert_particles` with
        ``pad=2`` (samples at ``q = (M/D) Aᵀk``, ``kx = 0`` column at ½, planes symmetrised).
    box_size
        ``D``; ``M`` must be ``2D``.

    Returns
    -------
    torch.Tensor
        ``(M, M, M // 2 + 1)`` real.
    """
    m = weights.shape[0]
    if m != 2 * box_size:
        raise ValueError(f"the Toeplitz grid must be 2D = {2 * box_size}, got {m}")
    w = weights.to(torch.float64)
    kernel = torch.fft.irfftn(w.to(torch.complex128), s=(m, m, m)) * (m**3 / box_size**2)
    kernel = kernel / _sinc2_window(m, box_size, kernel.device, kernel.dtype)
    return torch.fft.rfftn(kernel).real.to(weights.dtype)


def normal_rhs_from_insertion(insertion: FourierInsertion, *, gridding: bool = True) -> torch.Tensor:
    """``Aᵀb`` of the Fourier forward model from the insertion numerator (see direct's doc).

    ``Aᵀb = (P³ / D²) · G · crop(irfftn_centered(N))``.
    """
    d, p = insertion.box_size, insertion.padded
    vol = fs.crop_volume(irfftn_centered(insertion.numerator, p), d) * (p**3 / d**2)
    vol = vol.contiguous()
    return fs.gridding_correction(vol, p) if gridding else vol


class RealSpaceNormalOperator:
    """``x -> Σ_i A_iᵀ A_i x + λ x`` applied particle by particle (any projector).

    Parameters
    ----------
    model
        :class:`cryograd.forward.ForwardModel`.
    particles, indices
        The set and the (global) indices to use.
    lam
        ``λ``.
    use_ctf, symmetry, batch_size, device, dtype, comm
        As for :func:`solve_cg`.
    """

    def __init__(self, model, particles, indices, *, lam=0.0, use_ctf=True, symmetry=None,
                 batch_size=256, device="cpu", dtype=torch.float32, comm=None) -> None:
        from cryograd.distributed import single_process

        self.model = model
        self.particles = particles
        self.indices = np.asarray(indices, dtype=np.int64)
        self.lam = float(lam)
        self.use_ctf = use_ctf
        self.symmetry = symmetry
        self.batch_size = int(batch_size)
        self.device = device
        self.dtype = dtype
        self.comm = comm or single_process(device)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for global_batch in global_batches(self.indices, self.batch_size):
            local = self.comm.shard(global_batch)
            if not len(local):
                continue
            batch = load_batch(self.particles, local, device=self.device, dtype=self.dtype,
                               use_ctf=self.use_ctf, with_images=False)
            batch = expand_symmetry(batch, self.symmetry)
            filt = batch.model_filter()
            proj = self.model.project(x, batch.rotations, batch.shifts_px, filt)
            out += self.model.backproject(proj, batch.rotations, batch.shifts_px, filt)
        return self.comm.all_reduce_sum_(out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.normal(x) + self.lam * x


def backproject_data(model, particles, indices, *, use_ctf=True, symmetry=None, batch_size=256,
                     device="cpu", dtype=torch.float32, comm=None, progress=True) -> torch.Tensor:
    """``Aᵀb`` by the forward model's back-projector, streamed over the particles."""
    from cryograd.distributed import single_process

    comm = comm or single_process(device)
    d = model.box_size
    out = torch.zeros((d, d, d), device=device, dtype=dtype)
    indices = np.asarray(indices, dtype=np.int64)
    bar = tqdm(total=len(indices), desc="Aᵀb", unit="ptcl",
               disable=not (progress and comm.is_main), leave=False)
    try:
        for global_batch in global_batches(indices, batch_size):
            local = comm.shard(global_batch)
            if len(local):
                batch = load_batch(particles, local, device=device, dtype=dtype, use_ctf=use_ctf)
                batch = expand_symmetry(batch, symmetry)
                out += model.backproject(batch.images, batch.rotations, batch.shifts_px,
                                         batch.model_filter())
            bar.update(len(global_batch))
    finally:
        bar.close()
    return comm.all_reduce_sum_(out)


def solve_cg(
    particles,
    indices: np.ndarray | None = None,
    *,
    lam: float,
    projector: str = "fourier",
    pad: float = 2.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    use_ctf: bool = True,
    symmetry: torch.Tensor | None = None,
    tol: float = 1e-5,
    max_iter: int = 200,
    comm=None,
    progress: bool = True,
    insertion: FourierInsertion | None = None,
) -> CGResult:
    """Solve ``(AᵀA + λI) x = Aᵀb`` for the particles ``indices``.

    Parameters
    ----------
    particles, indices
        The set and the particles to use (default all).
    lam
        ``λ`` (operator units; ``cryograd.solvers.direct.lam_to_wiener`` gives direct's equivalent).
    projector, pad
        Forward model (``"fourier"`` uses the Toeplitz operator; ``pad`` applies to ``Aᵀb``).
    tol, max_iter
        Relative-residual tolerance and iteration limit.
    insertion
        Reuse an insertion of these particles made with ``pad=2`` (Fourier projector only).

    Returns
    -------
    CGResult
    """
    from cryograd.forward import ForwardModel

    if indices is None:
        indices = np.arange(len(particles))
    d = int(particles.box_size)
    common = dict(device=device, dtype=dtype, use_ctf=use_ctf, symmetry=symmetry, comm=comm)
    if projector == "fourier":
        if insertion is None or insertion.padded != 2 * d:
            insertion = insert_particles(particles, indices, pad=2.0, batch_size=batch_size,
                                         progress=progress, desc="insert", **common)
        if fs.padded_size(d, pad) == insertion.padded:
            rhs = normal_rhs_from_insertion(insertion)
        else:
            model = ForwardModel(d, particles.pixel_size_angstrom, "fourier", pad)
            rhs = backproject_data(model, particles, indices, batch_size=batch_size or 256,
                                   progress=progress, **common)
        operator = ToeplitzNormalOperator(toeplitz_from_weights(insertion.weights, d), d, lam)
    else:
        model = ForwardModel(d, particles.pixel_size_angstrom, projector, pad)
        bs = batch_size or model.batch_size
        rhs = backproject_data(model, particles, indices, batch_size=bs, progress=progress,
                               **common)
        operator = RealSpaceNormalOperator(model, particles, indices, lam=lam, batch_size=bs,
                                           **common)
    result = conjugate_gradient(operator, rhs, tol=tol, max_iter=max_iter, progress=progress)
    logger.info("CG: %d iterations, relative residual %.2e%s", result.iterations,
                result.residuals[-1], "" if result.converged else " (not converged)")
    return result
