"""Conjugate gradients on the regularised normal equations ``(AᵀA + λI) x = Aᵀb``.

``A`` is the forward model of :class:`cryograd.forward.ForwardModel` (shift, CTF, projector). Two
ways to apply ``AᵀA``:

* Fourier projector — a Toeplitz (convolution) operator built once from the data, as ASPIRE does:
  ``AᵀA x ≈ (P³ / D²) · crop(irfftn(W · rfftn(pad(x))))`` on the padded grid (``P ≈ pad · D``, at
  least ``2D`` for a true Toeplitz form), where ``W = Σ c²`` are the CTF² weights inserted by the
  Fourier-slice back-projector's scatter at ``q = (P/D) Aᵀk`` — the same insertion the direct method
  makes (:func:`cryograd.solvers.direct.insert_particles`), whose numerator also gives ``Aᵀb``
  exactly. Every iteration costs two FFTs of ``P³``, whatever the number of particles. The kernel
  is that of the continuous operator ``k(d) = (1/D²) Σ_i Σ_k c_ik² exp(2πi (A_iᵀ k)·d / D)`` seen
  through the trilinear window (its tails are damped by ``sinc²(d/P)``), which makes it positive
  semi-definite; compared with the exact ``AᵀA`` of the discrete projector it differs by the
  gridding window (a few per cent on a map). Where the support constraint (``crop ∘ pad``) does
  not matter this system is solved by the direct method's division ``N / (W + λ D²/P³)``; CG also
  honours the box, which fixes the low-frequency deficit of the division.
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
from cryograd.solvers.batches import batch_loader, expand_symmetry, global_batches, load_batch
from cryograd.solvers.direct import FourierInsertion, insert_particles

__all__ = [
    "CGResult",
    "conjugate_gradient",
    "ToeplitzNormalOperator",
    "refine_in_box",
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


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """``Σ a·b`` accumulated in float64."""
    return float(torch.dot(a.reshape(-1).to(torch.float64), b.reshape(-1).to(torch.float64)))


def _norm64(a: torch.Tensor) -> float:
    """``‖a‖₂`` accumulated in float64."""
    return float(torch.linalg.vector_norm(a.reshape(-1).to(torch.float64)))


def conjugate_gradient(
    apply_operator: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 200,
    progress: bool = False,
    preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
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
    preconditioner
        Optional symmetric positive definite ``r -> M⁻¹ r`` (preconditioned CG).

    Returns
    -------
    CGResult
    """
    work = torch.float64 if rhs.dtype == torch.float64 else rhs.dtype
    b = rhs.to(work)
    # the vectors stay in the working dtype; every dot product and norm is summed in float64, so
    # that the scalars (and the iterates) do not depend on the summation order of float32 sums
    x = torch.zeros_like(b) if x0 is None else x0.to(work).clone()
    r = b - apply_operator(x) if x0 is not None else b.clone()
    b_norm = _norm64(b)
    if b_norm == 0:
        return CGResult(torch.zeros_like(b), 0, True, [0.0])
    precond = preconditioner or (lambda v: v)
    z = precond(r)
    p = z.clone()
    rz_old = _dot64(r, z)
    residuals = [_norm64(r) / b_norm]
    converged = residuals[0] <= tol
    it = 0
    bar = tqdm(total=max_iter, desc="cg", unit="it", disable=not progress, leave=False)
    try:
        while not converged and it < max_iter:
            hp = apply_operator(p)
            denom = _dot64(p, hp)
            if denom <= 0:
                logger.warning("CG: operator is not positive definite along a search direction")
                break
            alpha = rz_old / denom
            x = x + alpha * p
            r = r - alpha * hp
            it += 1
            residuals.append(_norm64(r) / b_norm)
            bar.update(1)
            bar.set_postfix(residual=f"{residuals[-1]:.2e}")
            if residuals[-1] <= tol:
                converged = True
                break
            z = precond(r)
            rz_new = _dot64(r, z)
            p = z + (rz_new / rz_old) * p
            rz_old = rz_new
    finally:
        bar.close()
    return CGResult(x.to(rhs.dtype), it, converged, residuals)


class ToeplitzNormalOperator:
    """``x -> AᵀA x + λ x (+ R x)`` as a convolution on the padded grid (see module doc).

    Parameters
    ----------
    weights
        ``(P, P, P // 2 + 1)`` real CTF² weight sums of :func:`insert_particles` (full-grid sums).
    box_size
        ``D``.
    lam
        ``λ``.
    spectral_reg
        Optional ``(P, P, P // 2 + 1)`` real Wiener terms ``ρ(q)`` in the units of the weights
        (e.g. RELION's ``1/τ²`` per shell): adds ``R = crop · F⁻¹ (P³/D²) ρ F · pad``.
    """

    def __init__(
        self,
        weights: torch.Tensor,
        box_size: int,
        lam: float = 0.0,
        spectral_reg: torch.Tensor | None = None,
    ) -> None:
        self.box_size = int(box_size)
        self.size = int(weights.shape[0])
        # unnormalised inverse FFT: (P³/D²) · irfftn = (1/D²) · Σ_q
        scale = self.size**3 / self.box_size**2
        self.kernel_spectrum = weights * scale
        self.multiplier = self.kernel_spectrum
        if spectral_reg is not None:
            self.multiplier = self.kernel_spectrum + spectral_reg.to(weights.dtype) * scale
        self.lam = float(lam)

    def _convolve(self, x: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
        d, m = self.box_size, self.size
        padded = x.new_zeros((m, m, m))
        padded[:d, :d, :d] = x
        spec = torch.fft.rfftn(padded) * multiplier.to(x.dtype)
        return torch.fft.irfftn(spec, s=(m, m, m))[:d, :d, :d].contiguous()

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``AᵀA x`` (without ``λ`` and ``R``)."""
        return self._convolve(x, self.kernel_spectrum)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._convolve(x, self.multiplier) + self.lam * x

    def preconditioner(self, r: torch.Tensor) -> torch.Tensor:
        """``crop(irfftn(rfftn(pad(r)) / (K + R + λ)))``: the direct division as ``M⁻¹``."""
        denom = self.multiplier + max(self.lam, 1e-12)
        return self._convolve(r, 1.0 / denom)


def refine_in_box(
    insertion: FourierInsertion,
    regularizer: float | torch.Tensor,
    x0: torch.Tensor,
    *,
    iterations: int = 3,
) -> torch.Tensor:
    """A few preconditioned CG steps from the direct map ``x0`` on the same regularised system.

    The direct division ignores that the map lives in the ``D`` box inside the padded grid; where
    the weights change fast (near the origin, whose sampling density grows as ``1/|q|``) this
    loses low-frequency power outside the box (the map's mean comes out ~30–40 % low). Solving
    ``(AᵀA + R) x = Aᵀb`` with the Toeplitz ``AᵀA`` (``R`` the same Wiener term), preconditioned
    by the division itself, restores it in about three iterations (four FFTs of ``P³`` each).
    The map is confined to the sphere inscribed in the box (radius ``D/2 − 1``; it is zero
    outside), the support every point group maps onto itself, so a symmetric ``x0`` stays
    symmetric.

    Parameters
    ----------
    insertion
        The insertion sums.
    regularizer
        The Wiener term ``ρ`` used for ``x0`` (constant or per shell, see ``wiener_reconstruct``).
    x0
        ``(D, D, D)`` direct map.
    iterations
        PCG iterations (0 returns ``x0``).
    """
    from cryograd.solvers.direct import padded_shell_index

    if iterations <= 0:
        return x0
    d, p = insertion.box_size, insertion.padded
    w = insertion.weights
    if isinstance(regularizer, torch.Tensor) and regularizer.numel() > 1:
        shells = padded_shell_index(d, p, device=w.device)
        reg_shell = regularizer.to(device=w.device, dtype=w.dtype).reshape(-1)
        reg = reg_shell[shells.clamp(max=reg_shell.numel() - 1)]
    else:
        reg = torch.full_like(w, float(regularizer))
    op = ToeplitzNormalOperator(w, d, 0.0, spectral_reg=reg)
    c = torch.arange(d, device=w.device, dtype=w.dtype) - d // 2
    r2 = c.view(-1, 1, 1) ** 2 + c.view(1, -1, 1) ** 2 + c.view(1, 1, -1) ** 2
    sphere = (r2 <= (d // 2 - 1) ** 2).to(w.dtype)
    res = conjugate_gradient(
        lambda v: sphere * op(sphere * v),
        sphere * normal_rhs_from_insertion(insertion),
        x0=sphere * x0.to(w.dtype),
        tol=0.0,
        max_iter=iterations,
        preconditioner=lambda v: sphere * op.preconditioner(sphere * v),
    )
    return sphere * res.x


def normal_rhs_from_insertion(
    insertion: FourierInsertion, *, gridding: bool = True
) -> torch.Tensor:
    """``Aᵀb`` of the Fourier forward model from the insertion numerator (exact, see direct's doc).

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
    cache
        Keep poses and CTFs on the device across iterations (None: on a CUDA device when they
        fit, see :func:`cryograd.solvers.batches.should_cache`).
    """

    def __init__(
        self,
        model,
        particles,
        indices,
        *,
        lam=0.0,
        use_ctf=True,
        symmetry=None,
        batch_size=256,
        device="cpu",
        dtype=torch.float32,
        comm=None,
        cache: bool | None = None,
    ) -> None:
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
        self._load = batch_loader(
            particles,
            self.indices,
            device=device,
            dtype=dtype,
            use_ctf=use_ctf,
            with_images=False,
            cache=cache,
        )

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for global_batch in global_batches(self.indices, self.batch_size):
            local = self.comm.shard(global_batch)
            if not len(local):
                continue
            batch = self._load(local)
            batch = expand_symmetry(batch, self.symmetry)
            filt = batch.model_filter()
            proj = self.model.project(x, batch.rotations, batch.shifts_px, filt)
            out += self.model.backproject(proj, batch.rotations, batch.shifts_px, filt)
        return self.comm.all_reduce_sum_(out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.normal(x) + self.lam * x


def backproject_data(
    model,
    particles,
    indices,
    *,
    use_ctf=True,
    symmetry=None,
    batch_size=256,
    device="cpu",
    dtype=torch.float32,
    comm=None,
    progress=True,
) -> torch.Tensor:
    """``Aᵀb`` by the forward model's back-projector, streamed over the particles."""
    from cryograd.distributed import single_process

    comm = comm or single_process(device)
    d = model.box_size
    out = torch.zeros((d, d, d), device=device, dtype=dtype)
    indices = np.asarray(indices, dtype=np.int64)
    bar = tqdm(
        total=len(indices),
        desc="Aᵀb",
        unit="ptcl",
        disable=not (progress and comm.is_main),
        leave=False,
    )
    try:
        for global_batch in global_batches(indices, batch_size):
            local = comm.shard(global_batch)
            if len(local):
                batch = load_batch(particles, local, device=device, dtype=dtype, use_ctf=use_ctf)
                batch = expand_symmetry(batch, symmetry)
                out += model.backproject(
                    batch.images, batch.rotations, batch.shifts_px, batch.model_filter()
                )
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
        Forward model (``"fourier"`` uses the Toeplitz operator on the ``pad``-padded grid).
    tol, max_iter
        Relative-residual tolerance and iteration limit.
    insertion
        Reuse an insertion of these particles made with the same ``pad`` (Fourier projector).

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
        if insertion is None or insertion.padded != fs.padded_size(d, pad):
            insertion = insert_particles(
                particles,
                indices,
                pad=pad,
                batch_size=batch_size,
                progress=progress,
                desc="insert",
                **common,
            )
        rhs = normal_rhs_from_insertion(insertion)
        operator = ToeplitzNormalOperator(insertion.weights, d, lam)
    else:
        model = ForwardModel(d, particles.pixel_size_angstrom, projector, pad)
        bs = batch_size or model.batch_size
        rhs = backproject_data(
            model, particles, indices, batch_size=bs, progress=progress, **common
        )
        operator = RealSpaceNormalOperator(
            model, particles, indices, lam=lam, batch_size=bs, **common
        )
    precond = operator.preconditioner if isinstance(operator, ToeplitzNormalOperator) else None
    result = conjugate_gradient(
        operator, rhs, tol=tol, max_iter=max_iter, progress=progress, preconditioner=precond
    )
    logger.info(
        "CG: %d iterations, relative residual %.2e%s",
        result.iterations,
        result.residuals[-1],
        "" if result.converged else " (not converged)",
    )
    return result
