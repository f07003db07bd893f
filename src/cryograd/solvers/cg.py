"""The ``cg`` method: conjugate gradients on the regularised normal equations
``(AᵀA + λI) x = Aᵀb``.

The operators are in :mod:`cryograd.solvers.normal` (a Toeplitz ``AᵀA`` from one Fourier insertion
pass for the Fourier projector, the projector pair per iteration otherwise), the iteration in
:mod:`cryograd.solvers.krylov`.

The iterations themselves are replicated on every process; the operators sum their shards.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from cryograd.forward import ForwardModel
from cryograd.projectors import fourier_slice as fs
from cryograd.solvers.cg_checkpoint import checkpointed_cg
from cryograd.solvers.config import CGConfig, wiener_rho
from cryograd.solvers.context import CONTEXT_FIELDS, RunContext
from cryograd.solvers.insertion import (
    FourierInsertion,
    band_limit,
    default_regularizer,
    insert_halves_in_context,
    insert_in_context,
    lam_to_wiener,
    wiener_to_lam,
    with_data_mean,
)
from cryograd.solvers.krylov import CGResult, conjugate_gradient
from cryograd.solvers.normal import (
    RealSpaceNormalOperator,
    ToeplitzNormalOperator,
    backproject_data,
    normal_rhs_from_insertion,
)
from cryograd.solvers.registry import HalfMaps, register_solver

__all__ = ["CGSolver", "default_lam", "solve_cg"]

logger = logging.getLogger(__name__)


def solve_cg(
    particles,
    indices: np.ndarray | None = None,
    *,
    lam: float,
    projector: str = "fourier",
    pad: float = 2.0,
    batch_size: int | None = None,
    tol: float = 1e-5,
    max_iter: int = 200,
    progress: bool = True,
    insertion: FourierInsertion | None = None,
    context: RunContext | None = None,
    **context_options,
) -> CGResult:
    """Solve ``(AᵀA + λI) x = Aᵀb`` for the particles ``indices``.

    Parameters
    ----------
    particles, indices
        The set and the particles to use (default all).
    lam
        ``λ`` (operator units; :func:`cryograd.solvers.insertion.lam_to_wiener` gives the direct
        method's equivalent).
    projector, pad
        Forward model (``"fourier"`` uses the Toeplitz operator on the ``pad``-padded grid).
    batch_size
        Particles per global batch.
    tol, max_iter
        Relative-residual tolerance and iteration limit.
    insertion
        Reuse an insertion of these particles made with the same ``pad`` (Fourier projector).
    context
        :class:`~cryograd.solvers.context.RunContext`; or the options ``device`` (default
        ``"cpu"``), ``dtype``, ``use_ctf``, ``symmetry``, ``comm``.

    Returns
    -------
    CGResult
    """
    if context is None:
        context = _context(context_options)
    if indices is None:
        indices = np.arange(len(particles))
    d = int(particles.box_size)
    if projector == "fourier":
        if insertion is None or insertion.padded != fs.padded_size(d, pad):
            insertion = insert_in_context(
                particles, indices, context, pad=pad, batch_size=batch_size, progress=progress
            )
        rhs = normal_rhs_from_insertion(insertion)
        operator: ToeplitzNormalOperator | RealSpaceNormalOperator = ToeplitzNormalOperator(
            insertion.weights, d, lam
        )
    else:
        model = ForwardModel(d, particles.pixel_size_angstrom, projector, pad)
        bs = batch_size or model.batch_size
        common: dict[str, Any] = dict(
            device=context.device,
            dtype=context.dtype,
            use_ctf=context.use_ctf,
            symmetry=context.symmetry,
            comm=context.comm,
        )
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


def _context(options: dict) -> RunContext:
    unknown = sorted(set(options) - set(CONTEXT_FIELDS))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {', '.join(unknown)}")
    return RunContext.from_options({"device": "cpu", **options})


def default_lam(insertion: FourierInsertion, config: CGConfig) -> float:
    """``λ`` of the ``cg`` method: ``config.lam``; else the operator equivalent of the Wiener term
    of ``config.snr`` (:func:`~cryograd.solvers.config.wiener_rho`); else ten times the direct
    method's small default term."""
    if config.lam is not None:
        return float(config.lam)
    d, p = insertion.box_size, insertion.padded
    if config.snr is not None:
        rho = wiener_rho(config.snr, d, p)
    else:
        rho = 10.0 * default_regularizer(insertion)
    return wiener_to_lam(rho, d, p)


def _record(res: CGResult) -> dict:
    return {
        "iterations": res.iterations,
        "converged": res.converged,
        "relative_residual": res.residuals[-1],
    }


class CGSolver:
    """``cg``: ``(AᵀA + λI) x = Aᵀb`` per half and for the full set (Toeplitz operator from one
    insertion pass with the Fourier projector, the projector pair per iteration otherwise)."""

    name = "cg"
    config_type = CGConfig

    def solve_halves(
        self,
        particles,
        halves: tuple[np.ndarray, np.ndarray],
        config: CGConfig,
        context: RunContext,
        *,
        max_shell: int | None = None,
        progress: bool = True,
    ) -> HalfMaps:
        """The half maps and the full map (see :class:`~cryograd.solvers.registry.Solver`)."""
        out = HalfMaps(None, None, None)  # type: ignore[arg-type]  # set below
        t0 = time.perf_counter()
        if config.projector == "fourier":
            maps = self._toeplitz(particles, halves, config, context, max_shell, progress, out)
        else:
            maps = self._streamed(particles, halves, config, context, progress, out)
        out.history["lam"] = out.parameters.pop("lam_used")
        out.timings["cg"] = time.perf_counter() - t0
        if max_shell is not None:
            maps = [band_limit(m, max_shell) for m in maps]
        out.half1, out.half2, out.full = maps
        logger.info(
            "CG iterations: half1 %d, half2 %d, full %d",
            out.history["half1"]["iterations"],
            out.history["half2"]["iterations"],
            out.history["full"]["iterations"],
        )
        return out

    @staticmethod
    def _toeplitz(particles, halves, config, context, max_shell, progress, out) -> list:
        t0 = time.perf_counter()
        ins = insert_halves_in_context(
            particles,
            halves,
            context,
            pad=config.pad,
            batch_size=config.batch_size,
            max_shell=max_shell,
            progress=progress,
        )
        out.timings["insert"] = time.perf_counter() - t0
        lam_used = default_lam(ins[0] + ins[1], config)
        maps = []
        for name, i in (("half1", ins[0]), ("half2", ins[1]), ("full", ins[0] + ins[1])):
            op = ToeplitzNormalOperator(i.weights, i.box_size, lam_used)
            res = checkpointed_cg(op, normal_rhs_from_insertion(i), config, name)
            out.history[name] = _record(res)
            # the map's k = 0 term from the images' own, as direct does: the Toeplitz system
            # confines the map to the box but weighs the origin's few samples little
            rho = lam_to_wiener(lam_used, i.box_size, i.padded)
            maps.append(with_data_mean(res.x, i, rho))
        out.parameters["lam_used"] = lam_used
        return maps

    @staticmethod
    def _streamed(particles, halves, config, context, progress, out) -> list:
        probe = insert_in_context(
            particles, halves[0][:256], context, pad=config.pad, progress=False
        )
        lam_used = (
            default_lam(probe, config)
            * (len(halves[0]) + len(halves[1]))
            / max(1, min(256, len(halves[0])))
        )
        if config.lam is not None:
            lam_used = float(config.lam)
        maps = []
        for name, sel in (
            ("half1", halves[0]),
            ("half2", halves[1]),
            ("full", np.concatenate(halves)),
        ):
            res = solve_cg(
                particles,
                sel,
                lam=lam_used,
                projector=config.projector,
                pad=config.pad,
                batch_size=config.batch_size,
                tol=config.tol,
                max_iter=config.max_iter,
                progress=progress,
                context=context,
            )
            out.history[name] = _record(res)
            maps.append(res.x)
        out.parameters["lam_used"] = lam_used
        return maps


register_solver(CGSolver())
