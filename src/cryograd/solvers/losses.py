"""Data terms for the iterative solvers: ``l2``, ``l1``, ``huber`` and ``sorted-l1``.

Every loss maps the residuals of one global batch, ``r = A x - b`` (real-space pixels of the
projected particles minus the observed ones), to a number. The batch value is a sum over pixels and
particles divided by ``normalizer`` (the number of particles in the global batch), so that the
objective is the mean per-particle data term whatever the batch size.

In a distributed run each process holds a shard of the global batch. :meth:`DataLoss.__call__`
returns the process's *share* of the batch loss: summed over processes (``all_reduce_sum_``) the
shares give the value for the whole batch, and so do their gradients. For the separable losses the
share is simply the local sum; for ``sorted-l1``, whose weights depend on the rank of each residual
in the whole batch, the absolute residuals are gathered (through ``all_reduce_sum_``) to rank them.

``sorted-l1`` is the ordered weighted ℓ1 norm ``Σ_j λ_j |r|_(j)`` with ``|r|_(1) ≥ |r|_(2) ≥ …``
and a non-increasing sequence ``λ`` from :func:`lambda_sequence` (``bh``, ``linear``, ``equal``, or
an explicit array), normalised to mean 1 so that its scale is that of ``l1``. With ``equal`` weights
it is exactly ``l1``.

``huber``'s threshold ``δ`` is in image intensity units, so a fixed default would mean something
different for every data set; the default is ``δ = 1.345 · σ̂`` (:data:`HUBER_K`, Huber's choice
with 95 % efficiency under Gaussian noise) with ``σ̂`` a robust noise level,
``1.4826 · median|r − median r|`` (:func:`robust_sigma`) of residuals:
:meth:`HuberLoss.calibrate` takes them from the starting map on the training particles
(:mod:`cryograd.solvers.minibatch` calls it);
a :class:`HuberLoss` made without ``delta`` takes them from the first batch it sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "LOSSES",
    "DataLoss",
    "L2Loss",
    "L1Loss",
    "HuberLoss",
    "SortedL1Loss",
    "lambda_sequence",
    "sorted_l1_weights",
    "make_loss",
    "register_loss",
    "robust_sigma",
    "HUBER_K",
]

HUBER_K = 1.345
"""Huber threshold in units of the noise standard deviation (95 % efficiency for Gaussian noise)."""

LOSSES: dict[str, type[DataLoss]] = {}
"""Name -> loss class (filled by :func:`register_loss`); the ``--loss`` choices."""
LAMBDA_KINDS = ("bh", "linear", "equal")


def lambda_sequence(
    n: int,
    kind: str | Sequence[float] | np.ndarray | torch.Tensor = "bh",
    *,
    q: float = 0.1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """A non-increasing weight sequence ``λ_1 ≥ … ≥ λ_n ≥ 0`` with mean 1.

    Parameters
    ----------
    n
        Length of the sequence (number of sorted entries).
    kind
        ``"bh"``: Benjamini–Hochberg-style ``λ_j = Φ⁻¹(1 − q·j / (2n))`` (Bogdan et al. 2015);
        ``"linear"``: ``λ_j ∝ n − j + 1``; ``"equal"``: all ones (the sorted norm is then ℓ1);
        or an explicit non-increasing array of length ``m``, linearly resampled to length ``n``
        when ``m != n``.
    q
        Target false discovery rate of the ``bh`` sequence, in (0, 1).

    Returns
    -------
    torch.Tensor
        ``(n,)`` non-increasing, non-negative, mean 1 (all zeros only if given so).
    """
    if n <= 0:
        return torch.zeros(0, device=device, dtype=dtype)
    if isinstance(kind, str):
        if kind == "equal":
            return torch.ones(n, device=device, dtype=dtype)
        j = torch.arange(1, n + 1, device=device, dtype=torch.float64)
        if kind == "bh":
            if not 0.0 < q < 1.0:
                raise ValueError(f"the BH sequence needs 0 < q < 1, got {q}")
            lam = torch.special.ndtri(1.0 - q * j / (2.0 * n))
        elif kind == "linear":
            lam = n - j + 1.0
        else:
            raise ValueError(f"unknown lambda sequence {kind!r}; use one of {LAMBDA_KINDS}")
    else:
        given = torch.as_tensor(np.asarray(kind, dtype=np.float64)).to(device)
        if given.ndim != 1 or given.numel() == 0:
            raise ValueError("an explicit lambda sequence must be a non-empty 1D array")
        if torch.any(given[1:] > given[:-1]) or torch.any(given < 0):
            raise ValueError("an explicit lambda sequence must be non-negative and non-increasing")
        if given.numel() == n:
            lam = given
        else:  # resample onto n points, keeping monotonicity
            pos = torch.linspace(0, given.numel() - 1, n, device=device, dtype=torch.float64)
            lo = pos.floor().long().clamp(max=given.numel() - 1)
            hi = (lo + 1).clamp(max=given.numel() - 1)
            frac = pos - lo
            lam = given[lo] * (1 - frac) + given[hi] * frac
    lam = lam.clamp_min(0.0)
    mean = lam.mean()
    if mean > 0:
        lam = lam / mean
    return lam.to(dtype)


def sorted_l1_weights(
    abs_local: torch.Tensor, abs_global_sorted: torch.Tensor, lambdas: torch.Tensor
) -> torch.Tensor:
    """Weight of each local entry in the ordered weighted ℓ1 norm of the global set.

    The entry ranked ``j`` (descending) among all entries gets ``λ_j``; tied entries share the mean
    of the ``λ`` over their tied positions, so ``Σ w_i |r_i|`` equals ``Σ_j λ_j |r|_(j)`` exactly
    and ``w_i · sign(r_i)`` is a subgradient.

    Parameters
    ----------
    abs_local
        ``(m,)`` absolute values of this process's entries.
    abs_global_sorted
        ``(n,)`` absolute values of all entries, sorted ascending.
    lambdas
        ``(n,)`` non-increasing weights.

    Returns
    -------
    torch.Tensor
        ``(m,)`` weights.
    """
    n = abs_global_sorted.numel()
    # number of global entries strictly greater / greater-or-equal than each local one
    n_le = torch.searchsorted(abs_global_sorted, abs_local, right=True)
    n_lt = torch.searchsorted(abs_global_sorted, abs_local, right=False)
    first = n - n_le  # descending positions [first, last) hold the ties
    last = n - n_lt
    cum = torch.zeros(n + 1, device=lambdas.device, dtype=torch.float64)
    cum[1:] = torch.cumsum(lambdas.to(torch.float64), 0)
    count = (last - first).clamp_min(1)
    return ((cum[last] - cum[first]) / count).to(abs_local.dtype)


def register_loss(cls: type[DataLoss]) -> type[DataLoss]:
    """Class decorator: add a loss to :data:`LOSSES` under its ``name``."""
    LOSSES[cls.name] = cls
    return cls


class DataLoss:
    """Base class: ``loss(residuals, normalizer=B, comm=comm)`` is this process's share.

    Subclasses implement :meth:`pointwise` (``ρ(r)`` per pixel) or override :meth:`__call__`;
    :meth:`from_options` builds one from the solver's options, and a loss with a data-dependent
    setting (Huber's threshold) fixes it in :meth:`calibrate`.
    """

    name = "base"

    @classmethod
    def from_options(
        cls,
        *,
        huber_delta: float | None = None,
        sequence: str | Sequence[float] | np.ndarray = "bh",
        q: float = 0.1,
    ) -> DataLoss:
        """The loss from the options of :func:`make_loss` (each class takes what it needs)."""
        return cls()

    @property
    def needs_calibration(self) -> bool:
        """Whether :meth:`calibrate` still has to fix a setting from the data."""
        return False

    def calibrate(self, residuals: torch.Tensor) -> dict[str, float]:
        """Fix data-dependent settings from residuals ``A x₀ − b`` of a starting map; returns
        what was chosen (for the run's record). The base class has nothing to fix."""
        return {}

    def pointwise(self, residuals: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, residuals: torch.Tensor, *, normalizer: float, comm=None) -> torch.Tensor:
        """Share of the batch loss: ``Σ ρ(r) / normalizer`` over this process's residuals.

        Parameters
        ----------
        residuals
            ``(b, ...)`` residuals of this process's particles.
        normalizer
            Number of particles in the global batch.
        comm
            :class:`cryograd.distributed.Communicator` (unused by separable losses).
        """
        return self.pointwise(residuals).sum() / normalizer

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register_loss
class L2Loss(DataLoss):
    """``ρ(r) = r²`` (the negative log-likelihood of white Gaussian noise, up to scale)."""

    name = "l2"

    def pointwise(self, residuals: torch.Tensor) -> torch.Tensor:
        return residuals.square()


@register_loss
class L1Loss(DataLoss):
    """``ρ(r) = |r|``."""

    name = "l1"

    def pointwise(self, residuals: torch.Tensor) -> torch.Tensor:
        return residuals.abs()


def robust_sigma(values: torch.Tensor) -> float:
    """Robust standard deviation ``1.4826 · median(|x − median(x)|)`` of all entries (the MAD
    scaled to equal σ for Gaussian values; outliers barely move it)."""
    x = torch.as_tensor(values).detach().reshape(-1).to(torch.float64)
    if x.numel() == 0:
        raise ValueError("no values to estimate a noise level from")
    med = x.median()
    return float(1.482602218505602 * (x - med).abs().median())


@register_loss
class HuberLoss(DataLoss):
    """``ρ(r) = r²/2`` for ``|r| ≤ δ``, else ``δ(|r| − δ/2)``.

    Parameters
    ----------
    delta
        Threshold in image intensity units. None (default): ``δ = 1.345 · σ̂`` with ``σ̂`` the
        robust noise level (:func:`robust_sigma`, about zero) of the residuals of the first call,
        then kept fixed (one process only: a distributed run must give it).
    """

    name = "huber"

    def __init__(self, delta: float | None = None) -> None:
        if delta is not None and not delta > 0:
            raise ValueError(f"the Huber threshold must be positive, got {delta}")
        self.delta = None if delta is None else float(delta)

    @classmethod
    def from_options(cls, *, huber_delta=None, sequence="bh", q=0.1) -> HuberLoss:
        return cls(huber_delta)

    @property
    def needs_calibration(self) -> bool:
        return self.delta is None

    def calibrate(self, residuals: torch.Tensor) -> dict[str, float]:
        """``δ = 1.345 · σ̂`` with ``σ̂`` the robust noise level (:func:`robust_sigma`) of
        ``residuals``, unless ``δ`` was given."""
        if self.delta is not None:
            return {}
        sigma = robust_sigma(residuals)
        delta = HUBER_K * sigma
        if not delta > 0:
            raise ValueError(f"the Huber threshold must be positive, got {delta}")
        self.delta = delta
        return {"huber_delta": delta, "noise_sigma": sigma}

    def __call__(self, residuals: torch.Tensor, *, normalizer: float, comm=None) -> torch.Tensor:
        if self.delta is None:
            if comm is not None and comm.world_size > 1:
                raise ValueError(
                    "give the Huber threshold explicitly in a distributed run (each "
                    "process would estimate its own from its shard)"
                )
            flat = residuals.detach().reshape(-1).to(torch.float64)
            sigma = 1.482602218505602 * float(flat.abs().median()) if flat.numel() else 0.0
            self.delta = HUBER_K * sigma if sigma > 0 else 1.0
        return super().__call__(residuals, normalizer=normalizer, comm=comm)

    def pointwise(self, residuals: torch.Tensor) -> torch.Tensor:
        if self.delta is None:
            raise RuntimeError("HuberLoss.pointwise before its threshold was calibrated")
        return torch.nn.functional.huber_loss(
            residuals, torch.zeros_like(residuals), reduction="none", delta=self.delta
        )

    def __repr__(self) -> str:
        return f"HuberLoss(delta={self.delta})"


@register_loss
class SortedL1Loss(DataLoss):
    """Ordered weighted ℓ1 norm ``Σ_j λ_j |r|_(j)`` of all residual pixels of the global batch.

    Parameters
    ----------
    sequence
        ``"bh"``, ``"linear"``, ``"equal"`` or an explicit non-increasing array (see
        :func:`lambda_sequence`); the sequence is built for the number of entries of each batch.
    q
        FDR parameter of the ``bh`` sequence.
    """

    name = "sorted-l1"

    def __init__(self, sequence: str | Sequence[float] | np.ndarray = "bh", q: float = 0.1) -> None:
        if isinstance(sequence, str) and sequence not in LAMBDA_KINDS:
            raise ValueError(f"unknown lambda sequence {sequence!r}; use one of {LAMBDA_KINDS}")
        self.sequence = sequence
        self.q = float(q)
        self._cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_options(cls, *, huber_delta=None, sequence="bh", q=0.1) -> SortedL1Loss:
        return cls(sequence, q)

    def lambdas(self, n: int, device) -> torch.Tensor:
        key = (n, str(device))
        if key not in self._cache:
            self._cache = {key: lambda_sequence(n, self.sequence, q=self.q, device=device)}
        return self._cache[key]

    def __call__(self, residuals: torch.Tensor, *, normalizer: float, comm=None) -> torch.Tensor:
        abs_local = residuals.detach().abs().reshape(-1).to(torch.float64)
        m = abs_local.numel()
        if comm is None or comm.world_size == 1:
            gathered = abs_local
        else:
            gathered = _all_gather_1d(abs_local, comm)
        n = gathered.numel()
        if n == 0:
            return residuals.sum() * 0.0
        lam = self.lambdas(n, residuals.device)
        weights = sorted_l1_weights(abs_local, torch.sort(gathered).values, lam)
        weights = weights.to(residuals.dtype).reshape(residuals.shape)
        assert weights.numel() == m
        return (weights * residuals.abs()).sum() / normalizer

    def __repr__(self) -> str:
        seq = self.sequence if isinstance(self.sequence, str) else "custom"
        return f"SortedL1Loss(sequence={seq!r}, q={self.q})"


def _all_gather_1d(values: torch.Tensor, comm) -> torch.Tensor:
    """Concatenate every process's ``(m_r,)`` vector in rank order with ``all_reduce_sum_`` only."""
    counts = torch.zeros(comm.world_size, dtype=torch.float64, device=values.device)
    counts[comm.rank] = values.numel()
    comm.all_reduce_sum_(counts)
    counts_int = [int(c) for c in counts.tolist()]
    offset = sum(counts_int[: comm.rank])
    buffer = torch.zeros(sum(counts_int), dtype=values.dtype, device=values.device)
    buffer[offset : offset + values.numel()] = values
    return comm.all_reduce_sum_(buffer)


def make_loss(
    name: str,
    *,
    huber_delta: float | None = None,
    sequence: str | Sequence[float] | np.ndarray = "bh",
    q: float = 0.1,
) -> DataLoss:
    """The data term called ``name`` (one of :data:`LOSSES`)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    return LOSSES[name].from_options(huber_delta=huber_delta, sequence=sequence, q=q)
