"""Preconditioned conjugate gradients, and a few of its steps to refine a direct map in the box.

:func:`conjugate_gradient` solves ``H x = b`` for a symmetric positive definite ``H`` given as a
function; :func:`refine_in_box` runs it on the Toeplitz system of a Fourier insertion
(:mod:`cryograd.solvers.normal`), preconditioned by the direct division. Every dot product and
norm is accumulated in float64.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from cryograd.solvers.insertion import FourierInsertion, shell_regularizer
from cryograd.solvers.normal import ToeplitzNormalOperator, normal_rhs_from_insertion

__all__ = ["CGResult", "conjugate_gradient", "refine_in_box"]

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
    if iterations <= 0:
        return x0
    d = insertion.box_size
    w = insertion.weights
    reg, _ = shell_regularizer(insertion, regularizer)
    if not isinstance(reg, torch.Tensor):
        reg = torch.full_like(w, reg)
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
