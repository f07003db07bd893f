"""Keyword options of :func:`cryograd.reconstruct` -> the method's validated config and the run
context."""

from __future__ import annotations

import dataclasses

from cryograd.errors import CryogradError
from cryograd.solvers import SOLVERS
from cryograd.solvers.config import GradientConfig, SolverConfig
from cryograd.solvers.context import CONTEXT_FIELDS, RunContext
from cryograd.solvers.registry import Solver

__all__ = ["solver_for", "method_config", "run_context", "known_options", "ALIASES"]

ALIASES = {"cg_tol": "tol", "cg_max_iter": "max_iter"}
"""Earlier names of options (``reconstruct(..., cg_max_iter=50)``) -> the config field."""


def solver_for(method: str) -> Solver:
    """The registered solver of ``method`` (:data:`cryograd.solvers.SOLVERS`)."""
    if method not in SOLVERS:
        raise CryogradError(f"unknown method {method!r}; use one of {', '.join(SOLVERS)}")
    return SOLVERS[method]


def known_options() -> set[str]:
    """Every option a method's config or the run context takes."""
    names = set(CONTEXT_FIELDS)
    for solver in SOLVERS.values():
        names.update(solver.config_type.field_names())
    return names


def method_config(method: str, config: SolverConfig | None, options: dict) -> SolverConfig:
    """The validated config of ``method``: ``config`` (or the defaults) with the ``options`` that
    the method takes. Options of the other methods are ignored (one call can carry the settings
    of every method, as the command line does); unknown options are refused."""
    solver = solver_for(method)
    cls = solver.config_type
    options = {ALIASES.get(k, k): v for k, v in options.items()}
    unknown = sorted(set(options) - known_options())
    if unknown:
        raise TypeError(f"reconstruct() got unexpected keyword arguments {', '.join(unknown)}")
    own = {k: v for k, v in options.items() if k in cls.field_names() and k not in CONTEXT_FIELDS}
    if issubclass(cls, GradientConfig):
        own["optimizer"] = method
    if config is None:
        return cls(**own)
    if not isinstance(config, cls):
        raise CryogradError(
            f"config is a {type(config).__name__}; method {method!r} takes a {cls.__name__}"
        )
    return dataclasses.replace(config, **own) if own else config


def run_context(context: RunContext | None, options: dict) -> RunContext:
    """``context``, or one made from the options ``device`` (default ``"auto"``), ``dtype``,
    ``use_ctf``, ``sym``, ``comm``."""
    given = {k: options[k] for k in CONTEXT_FIELDS if k in options}
    if context is not None:
        if given:
            raise TypeError(f"give context or {', '.join(sorted(given))}, not both")
        return context
    return RunContext.from_options(given)
