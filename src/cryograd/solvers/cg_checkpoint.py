"""CG with checkpoints: the iterate saved every :data:`~cryograd.solvers.checkpointing.CG_CHUNK`
iterations, so that ``--resume`` continues an interrupted ``cg`` run where it stopped.

Without :func:`cryograd.solvers.checkpointing.checkpointing` active this is one plain
:func:`~cryograd.solvers.krylov.conjugate_gradient` call.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cryograd.io.atomic import atomic_path
from cryograd.solvers.checkpointing import CG_CHECKPOINT, CG_CHUNK, current
from cryograd.solvers.krylov import CGResult, conjugate_gradient

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
    if spec is None:
        return conjugate_gradient(
            op, rhs, tol=config.tol, max_iter=config.max_iter, preconditioner=op.preconditioner
        )
    path = spec.folder / CG_CHECKPOINT
    # a fresh run starts the file with its first stage and keeps the stages it finished
    state = _load(path) if spec.resume or stage != "half1" else {}
    saved = state.get(stage) if spec.resume else None
    x0 = None
    iterations, residuals = 0, []
    if saved is not None:
        x0 = saved["x"].to(rhs.device)
        iterations, residuals = int(saved["iterations"]), list(saved["residuals"])
        if saved["done"]:
            logger.info("cg %s: taken from the checkpoint (%d iterations)", stage, iterations)
            return CGResult(x0.to(rhs.dtype), iterations, bool(saved["converged"]), residuals)
        logger.info("cg %s: resuming after iteration %d", stage, iterations)
    while True:
        chunk = min(CG_CHUNK, config.max_iter - iterations)
        res = conjugate_gradient(
            op, rhs, x0=x0, tol=config.tol, max_iter=chunk, preconditioner=op.preconditioner
        )
        residuals += res.residuals if not residuals else res.residuals[1:]
        iterations += res.iterations
        x0 = res.x
        done = res.converged or iterations >= config.max_iter or res.iterations < chunk
        if spec.is_main:
            state[stage] = {
                "x": res.x.detach().cpu(),
                "iterations": iterations,
                "residuals": residuals,
                "converged": res.converged,
                "done": done,
            }
            _save(path, state)
        if done:
            return CGResult(res.x, iterations, res.converged, residuals)
