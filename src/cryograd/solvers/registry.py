"""The reconstruction methods by name: ``SOLVERS`` feeds ``--method`` and ``reconstruct``.

A solver is an object with a ``name``, a ``config_type`` (a frozen
:class:`~cryograd.solvers.config.SolverConfig` subclass) and
``solve_halves(particles, halves, config, context, *, max_shell, progress) -> HalfMaps``: the two
half maps and the full map of a gold-standard run. Each solver module registers its own with
:func:`register_solver` when imported; :mod:`cryograd.solvers` imports them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from cryograd.solvers.config import SolverConfig
    from cryograd.solvers.context import RunContext

__all__ = ["HalfMaps", "Solver", "SOLVERS", "register_solver"]


@dataclass
class HalfMaps:
    """What a solver returns for a gold-standard run.

    Attributes
    ----------
    half1, half2
        ``(D, D, D)`` maps of the two half sets.
    full
        ``(D, D, D)`` map of all particles (before FSC weighting).
    history
        Per-method record (CG iterations, losses per epoch, Wiener terms, ...).
    timings
        Seconds per stage.
    parameters
        Settings chosen during the run, recorded with the user's (e.g. the learning rate).
    """

    half1: torch.Tensor
    half2: torch.Tensor
    full: torch.Tensor
    history: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)


class Solver(Protocol):
    """What :data:`SOLVERS` holds."""

    name: str

    @property
    def config_type(self) -> type[SolverConfig]:
        """The config class the solver takes."""

    def solve_halves(
        self,
        particles,
        halves: tuple[np.ndarray, np.ndarray],
        config: Any,
        context: RunContext,
        *,
        max_shell: int | None = None,
        progress: bool = True,
    ) -> HalfMaps: ...


SOLVERS: dict[str, Solver] = {}
"""Method name -> solver, in the order registered."""


def register_solver(solver: Solver) -> Solver:
    """Add ``solver`` to :data:`SOLVERS` under its ``name``; returns it."""
    SOLVERS[solver.name] = solver
    return solver
