"""The run context every solver shares: where and how to compute, and who computes with it.

:class:`RunContext` replaces the ``(device, dtype, use_ctf, symmetry, comm)`` tuple that the
solvers used to pass around one argument at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from cryograd.distributed import Communicator, resolve_device, single_process
from cryograd.errors import CryogradError
from cryograd.symmetry import group_order, symmetry_matrices

__all__ = ["RunContext", "CONTEXT_FIELDS"]

CONTEXT_FIELDS = ("device", "dtype", "use_ctf", "sym", "symmetry", "comm")
"""Keyword options that build a :class:`RunContext` (see :meth:`RunContext.from_options`)."""


@dataclass(frozen=True, eq=False)
class RunContext:
    """Where and how a reconstruction computes.

    Attributes
    ----------
    device
        Torch device of the grids and batches.
    dtype
        Real precision, ``torch.float32`` or ``torch.float64``.
    use_ctf
        Weight by the CTF (False: reconstruct without CTF correction).
    symmetry
        ``(G, 3, 3)`` symmetry operators on ``device``
        (:func:`cryograd.symmetry.symmetry_matrices`), or None for ``C1``.
    comm
        :class:`cryograd.distributed.Communicator` (one process by default).
    sym
        Name of the point group (``"C1"``, ``"D7"``, ...), as recorded in ``run.json``.
    particle_weights
        ``(N,)`` weights in ``[0, 1]`` of every particle of the set (indexed like the set), or
        None: each particle's data term is multiplied by its weight
        (:mod:`cryograd.solvers.particle_weights`; ``--robust``, ``--weight-column``).
    half_insertions
        The two halves' :class:`~cryograd.solvers.insertion.FourierInsertion` already made with
        ``particle_weights`` (``--robust`` keeps its last ones), which ``direct`` takes in place of
        inserting again (and consumes: its full map's sums go into half 1's), or None.
    """

    device: torch.device
    dtype: torch.dtype = torch.float32
    use_ctf: bool = True
    symmetry: torch.Tensor | None = None
    comm: Communicator = None  # type: ignore[assignment]  # None: filled in __post_init__
    sym: str = "C1"
    particle_weights: np.ndarray | None = None
    half_insertions: tuple | None = None

    def __post_init__(self) -> None:
        if self.dtype not in (torch.float32, torch.float64):
            raise CryogradError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        if self.comm is None:
            object.__setattr__(self, "comm", single_process(self.device))

    @classmethod
    def create(
        cls,
        device: str | torch.device | None = "auto",
        dtype: torch.dtype = torch.float32,
        use_ctf: bool = True,
        sym: str = "C1",
        comm: Communicator | None = None,
    ) -> RunContext:
        """A context from user-level values: ``device`` ``"auto"``, ``"cpu"``, ``"cuda[:N]"``
        (resolved here), the point group by name (validated, expanded into its operators)."""
        dev = device if isinstance(device, torch.device) else resolve_device(device or "auto")
        group_order(sym)  # validates the name
        mats = None if sym.upper() == "C1" else symmetry_matrices(sym, dtype=dtype, device=dev)
        return cls(dev, dtype, bool(use_ctf), mats, comm, sym)  # type: ignore[arg-type]

    @classmethod
    def from_options(cls, options: dict) -> RunContext:
        """A context from keyword options (``device``, ``dtype``, ``use_ctf``, ``sym`` or the
        ``symmetry`` operators themselves, ``comm``); missing ones take their defaults."""
        if options.get("symmetry") is not None:
            dev = options.get("device") or "cpu"
            dev = dev if isinstance(dev, torch.device) else resolve_device(dev)
            dtype = options.get("dtype", torch.float32)
            mats = options["symmetry"].to(device=dev, dtype=dtype)
            use_ctf = bool(options.get("use_ctf", True))
            return cls(dev, dtype, use_ctf, mats, options.get("comm"))  # type: ignore[arg-type]
        keys = ("device", "dtype", "use_ctf", "sym", "comm")
        return cls.create(**{k: options[k] for k in keys if k in options})

    def with_comm(self, comm: Communicator) -> RunContext:
        """The same context with another communicator."""
        return replace(self, comm=comm)

    def with_weights(self, weights: np.ndarray | None) -> RunContext:
        """The same context with per-particle weights (None: every particle weighs 1), and no
        :attr:`half_insertions` (they were made with other weights)."""
        return replace(self, particle_weights=weights, half_insertions=None)

    def with_half_insertions(self, insertions: tuple | None) -> RunContext:
        """The same context with the halves' insertion sums (see :attr:`half_insertions`)."""
        return replace(self, half_insertions=insertions)
