"""Where the running reconstruction checkpoints, for solvers whose config has no such field.

``cryograd reconstruct`` sets it around the run (:func:`checkpointing`); the ``cg`` solver reads
it (:func:`current`) and saves its state every :data:`CG_CHUNK` iterations. Outside the block
nothing is checkpointed and every solver runs as before.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CheckpointSpec", "checkpointing", "current", "CG_CHUNK", "CG_CHECKPOINT"]

CG_CHUNK = 25
"""CG iterations between two checkpoints of its whole state (a resumed run follows the same path
as an uninterrupted one; no restart)."""

CG_CHECKPOINT = "checkpoint_cg.pt"


@dataclass(frozen=True)
class CheckpointSpec:
    """Checkpoint into ``folder`` (main process only); ``resume`` continues from there."""

    folder: Path
    resume: bool
    is_main: bool = True


_CURRENT: contextvars.ContextVar[CheckpointSpec | None] = contextvars.ContextVar(
    "cryograd_checkpointing", default=None
)


@contextmanager
def checkpointing(folder: str | Path, *, resume: bool, is_main: bool = True) -> Iterator[None]:
    """Checkpoint into ``folder`` during the block."""
    token = _CURRENT.set(CheckpointSpec(Path(folder), resume, is_main))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current() -> CheckpointSpec | None:
    """The active :class:`CheckpointSpec`, or None."""
    return _CURRENT.get()
