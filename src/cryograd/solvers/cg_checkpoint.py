"""CG with checkpoints: its whole state (iterate, residual, search direction) saved every
:data:`~cryograd.solvers.checkpointing.CG_CHUNK` iterations, so that ``--resume`` continues an
interrupted ``cg`` run exactly where it stopped (the same iterates as an uninterrupted run).

Without :func:`cryograd.solvers.checkpointing.checkpointing` active this is one plain
:func:`~cryograd.solvers.krylov.conjugate_gradient` call.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cryograd.io.atomic import atomic_path
from cryograd.solvers.checkpointing import CG_CHECKPOINT, CG_CHUNK, current
from cryograd.solvers.krylov import CGResult, CGState, conjugate_gradient

__all__ = ["checkpointed_cg"]

logger = logging.getLogger(__name__)


def _load(path: Path) -> dict:
    if not path.exists():
        return {}
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state if isinstance(state, dict) else {}


def _save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _saved_state(saved: dict, device: torch.device) -> CGState:
    return CGState(
        x=saved["x"].to(device),
        r=saved["r"].to(device),
        p=saved["p"].to(device),
        rz=float(saved["rz"]),
        iterations=int(saved["iterations"]),
        residuals=list(saved["residuals"]),
    )


def checkpointed_cg(op, rhs: torch.Tensor, config, stage: str) -> CGResult:
    """Solve ``op x = rhs`` (preconditioned by ``op.preconditioner``) for the stage ``stage``
    (``"half1"``, ``"half2"``, ``"full"``), checkpointing when a checkpoint folder is set.

    Parameters
    ----------
    op
        :class:`~cryograd.solvers.normal.ToeplitzNormalOperator`.
    rhs
        ``(D, D, D)`` right-hand side.
    config
        :class:`~cryograd.solvers.config.CGConfig` (``tol``, ``max_iter``).
    stage
        Name of the solve in the checkpoint.
    """
    spec = current()
    solve = {"tol": config.tol, "max_iter": config.max_iter, "preconditioner": op.preconditioner}
    if spec is None:
        return conjugate_gradient(op, rhs, **solve)
    path = spec.folder / CG_CHECKPOINT
    # a fresh run starts the file with its first stage and keeps the stages it finished
    state = _load(path) if spec.resume or stage != "half1" else {}
    saved = state.get(stage) if spec.resume else None
    resume = None
    if saved is not None:
        if saved["done"]:
            logger.info(
                "cg %s: taken from the checkpoint (%d iterations)", stage, saved["iterations"]
            )
            x = saved["x"].to(rhs.device, rhs.dtype)
            return CGResult(
                x, int(saved["iterations"]), bool(saved["converged"]), saved["residuals"]
            )
        resume = _saved_state(saved, rhs.device)
        logger.info("cg %s: resuming after iteration %d", stage, resume.iterations)

    def save(st: CGState, finished: bool) -> None:
        if not spec.is_main or not (finished or st.iterations % CG_CHUNK == 0):
            return
        state[stage] = {
            "x": st.x.detach().cpu(),
            "r": st.r.detach().cpu(),
            "p": st.p.detach().cpu(),
            "rz": st.rz,
            "iterations": st.iterations,
            "residuals": list(st.residuals),
            "converged": st.residuals[-1] <= config.tol,
            "done": finished,
        }
        _save(path, state)

    res = conjugate_gradient(op, rhs, resume=resume, after_iteration=save, **solve)
    if spec.is_main and not state.get(stage, {}).get("done"):  # stopped early (or no iteration)
        state[stage] = {
            "x": res.x.detach().cpu(),
            "iterations": res.iterations,
            "done": True,
            "residuals": res.residuals,
            "converged": res.converged,
        }
        _save(path, state)
    return res
