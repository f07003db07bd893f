"""Penalties on the volume: ``none``, ``l2``, ``l1``, ``sorted-l1`` (SLOPE) and ``tv``.

A penalty ``lam · R(x)`` enters the iterative solvers in one of two ways: its smooth part is added
to the loss and differentiated by autograd (:meth:`Penalty.smooth`), and its non-smooth part is
applied after each optimiser step through its proximal operator (:meth:`Penalty.prox_`), i.e.
``x ← argmin_z ½‖z − x‖² + step · lam · R(z)``.

The SLOPE norm ``J_λ(x) = Σ_j λ_j |x|_(j)`` (``|x|_(1) ≥ |x|_(2) ≥ …``, ``λ`` non-increasing) has
the proximal operator of Bogdan et al. (2015, "SLOPE — adaptive variable selection via convex
optimization", Algorithm 3): sort ``|v|`` in decreasing order, subtract ``λ``, project onto the
non-increasing cone (isotonic regression by pool-adjacent-violators), clip at zero, and restore the
order and the signs. Their Algorithm 4 pools one violating pair at a time from a stack;
:func:`isotonic_nonincreasing` first pools every maximal run of adjacent violators per vectorised
pass (a run's blocks have increasing means, so pooling the whole run is a sequence of valid PAVA
merges), and hands the few remaining blocks to the stack sweep once the passes stop shrinking them
quickly. Any order of valid merges reaches the same, unique, solution.
"""

from __future__ import annotations

import torch

from cryograd.solvers.losses import lambda_sequence

__all__ = [
    "PENALTIES",
    "Penalty",
    "NoPenalty",
    "L2Penalty",
    "L1Penalty",
    "SortedL1Penalty",
    "TVPenalty",
    "isotonic_nonincreasing",
    "prox_sorted_l1",
    "sorted_l1_norm",
    "soft_threshold",
    "total_variation",
    "make_penalty",
    "register_penalty",
]

PENALTIES: dict[str, type[Penalty]] = {}
"""Name -> penalty class (filled by :func:`register_penalty`); the ``--penalty`` choices."""


def register_penalty(cls: type[Penalty]) -> type[Penalty]:
    """Class decorator: add a penalty to :data:`PENALTIES` under its ``name``."""
    PENALTIES[cls.name] = cls
    return cls


def isotonic_nonincreasing(y: torch.Tensor) -> torch.Tensor:
    """Least-squares projection of ``y`` onto non-increasing sequences.

    Solves ``argmin_x ‖x − y‖²`` subject to ``x_1 ≥ x_2 ≥ … ≥ x_n`` by pooling adjacent
    violators: vectorised passes that pool every maximal run of violators at once, while they
    shrink the number of blocks quickly, then the stack-based pass of Bogdan et al. (Algorithm 4)
    over the remaining blocks, which needs one sweep whatever the cascade of merges.

    Parameters
    ----------
    y
        ``(n,)`` real.

    Returns
    -------
    torch.Tensor
        ``(n,)``, the dtype and device of ``y``.
    """
    n = y.numel()
    if n <= 1:
        return y.clone()
    work = torch.float64
    sums = y.to(work).reshape(-1).clone()
    counts = torch.ones(n, dtype=work, device=y.device)
    while True:
        means = sums / counts
        violate = means[:-1] < means[1:]  # block b must be pooled with block b + 1
        if not bool(violate.any()):
            break
        # a block starts a new pooled block unless its predecessor pools with it
        starts = torch.ones(sums.numel(), dtype=torch.bool, device=y.device)
        starts[1:] = ~violate
        block = torch.cumsum(starts.to(torch.int64), 0) - 1
        n_blocks = int(block[-1]) + 1
        shrink = n_blocks / sums.numel()
        sums = torch.zeros(n_blocks, dtype=work, device=y.device).index_add_(0, block, sums)
        counts = torch.zeros(n_blocks, dtype=work, device=y.device).index_add_(0, block, counts)
        if shrink > 0.9:  # slow progress: a cascade of merges; finish with one stack sweep
            sums, counts = _pava_stack(sums, counts)
            break
    means = sums / counts
    return torch.repeat_interleave(means, counts.round().to(torch.int64)).to(y.dtype)


def _pava_stack(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack-based pool-adjacent-violators over blocks ``(sum, count)`` (non-increasing fit)."""
    stack_sum: list[float] = []
    stack_count: list[float] = []
    for s, c in zip(sums.tolist(), counts.tolist()):
        stack_sum.append(s)
        stack_count.append(c)
        # pool while the block below has a smaller mean than the top one
        while (
            len(stack_sum) > 1 and stack_sum[-2] * stack_count[-1] < stack_sum[-1] * stack_count[-2]
        ):
            top_sum = stack_sum.pop()
            top_count = stack_count.pop()
            stack_sum[-1] += top_sum
            stack_count[-1] += top_count
    return (
        torch.tensor(stack_sum, dtype=sums.dtype, device=sums.device),
        torch.tensor(stack_count, dtype=counts.dtype, device=counts.device),
    )


def prox_sorted_l1(v: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """Proximal operator of the sorted ℓ1 norm: ``argmin_x ½‖x − v‖² + Σ_j λ_j |x|_(j)``.

    Parameters
    ----------
    v
        Any shape; treated as one flat vector of ``n`` entries.
    lambdas
        ``(n,)`` non-negative, non-increasing.

    Returns
    -------
    torch.Tensor
        The minimiser, the shape, dtype and device of ``v``.
    """
    flat = v.reshape(-1)
    lam = lambdas.to(device=flat.device, dtype=torch.float64).reshape(-1)
    if lam.numel() != flat.numel():
        raise ValueError(f"need {flat.numel()} weights, got {lam.numel()}")
    magnitude, order = torch.sort(flat.abs().to(torch.float64), descending=True)
    pooled = isotonic_nonincreasing(magnitude - lam).clamp_min(0.0)
    out = torch.empty_like(pooled)
    out[order] = pooled
    return (out.to(v.dtype) * torch.sign(flat)).reshape(v.shape)


def sorted_l1_norm(x: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """``Σ_j λ_j |x|_(j)`` with ``|x|`` sorted in decreasing order (differentiable)."""
    magnitude = torch.sort(x.reshape(-1).abs(), descending=True).values
    return (magnitude * lambdas.to(device=x.device, dtype=x.dtype)).sum()


def soft_threshold(v: torch.Tensor, threshold: float) -> torch.Tensor:
    """Proximal operator of ``threshold · ‖x‖₁``: ``sign(v) · max(|v| − threshold, 0)``."""
    return torch.sign(v) * (v.abs() - threshold).clamp_min(0.0)


def total_variation(volume: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Smoothed isotropic total variation ``Σ sqrt(|∇x|² + ε²) − ε`` of a ``(D, D, D)`` volume.

    Forward differences, with zero differences across the far faces (Neumann boundary).
    """
    dz = torch.zeros_like(volume)
    dy = torch.zeros_like(volume)
    dx = torch.zeros_like(volume)
    dz[:-1] = volume[1:] - volume[:-1]
    dy[:, :-1] = volume[:, 1:] - volume[:, :-1]
    dx[:, :, :-1] = volume[:, :, 1:] - volume[:, :, :-1]
    return (torch.sqrt(dz.square() + dy.square() + dx.square() + eps**2) - eps).sum()


class Penalty:
    """``lam · R(x)``: a smooth part for autograd and a proximal step for the rest."""

    name = "none"

    def __init__(self, lam: float = 0.0) -> None:
        if lam < 0:
            raise ValueError(f"the penalty weight must be non-negative, got {lam}")
        self.lam = float(lam)

    @classmethod
    def from_options(
        cls, lam: float = 0.0, *, sequence="bh", q: float = 0.1, tv_eps: float = 1e-4
    ) -> Penalty:
        """The penalty from the options of :func:`make_penalty` (each class takes what it
        needs)."""
        return cls(lam)

    def smooth(self, volume: torch.Tensor) -> torch.Tensor:
        """The differentiable part of the penalty (0 for prox-only penalties)."""
        return volume.sum() * 0.0

    @torch.no_grad()
    def prox_(self, volume: torch.Tensor, step: float) -> torch.Tensor:
        """Apply the proximal operator of ``step · lam · R`` in place (identity by default)."""
        return volume

    def value(self, volume: torch.Tensor) -> float:
        """``lam · R(volume)`` as a float."""
        with torch.no_grad():
            return float(self.smooth(volume))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam})"


@register_penalty
class NoPenalty(Penalty):
    """No penalty."""

    name = "none"

    @classmethod
    def from_options(cls, lam=0.0, *, sequence="bh", q=0.1, tv_eps=1e-4) -> NoPenalty:
        return cls(0.0)


@register_penalty
class L2Penalty(Penalty):
    """``lam · ‖x‖²`` (Tikhonov), differentiated by autograd."""

    name = "l2"

    def smooth(self, volume: torch.Tensor) -> torch.Tensor:
        return self.lam * volume.square().sum()


@register_penalty
class L1Penalty(Penalty):
    """``lam · ‖x‖₁``, applied by soft thresholding."""

    name = "l1"

    @torch.no_grad()
    def prox_(self, volume: torch.Tensor, step: float) -> torch.Tensor:
        return volume.copy_(soft_threshold(volume, step * self.lam))

    def value(self, volume: torch.Tensor) -> float:
        return self.lam * float(volume.detach().abs().sum())


@register_penalty
class SortedL1Penalty(Penalty):
    """SLOPE: ``lam · Σ_j λ_j |x|_(j)`` over all voxels, applied by its proximal operator.

    Parameters
    ----------
    lam
        Overall weight.
    sequence, q
        The ``λ`` sequence (see :func:`cryograd.solvers.losses.lambda_sequence`), mean 1.
    """

    name = "sorted-l1"

    def __init__(self, lam: float = 0.0, sequence="bh", q: float = 0.1) -> None:
        super().__init__(lam)
        self.sequence = sequence
        self.q = float(q)
        self._lambdas: torch.Tensor | None = None

    @classmethod
    def from_options(cls, lam=0.0, *, sequence="bh", q=0.1, tv_eps=1e-4) -> SortedL1Penalty:
        return cls(lam, sequence, q)

    def lambdas(self, n: int, device) -> torch.Tensor:
        if self._lambdas is None or self._lambdas.numel() != n or self._lambdas.device != device:
            self._lambdas = lambda_sequence(n, self.sequence, q=self.q, device=device)
        return self._lambdas

    @torch.no_grad()
    def prox_(self, volume: torch.Tensor, step: float) -> torch.Tensor:
        if self.lam == 0:
            return volume
        lam = self.lambdas(volume.numel(), volume.device) * (step * self.lam)
        return volume.copy_(prox_sorted_l1(volume, lam))

    def value(self, volume: torch.Tensor) -> float:
        lam = self.lambdas(volume.numel(), volume.device)
        return self.lam * float(sorted_l1_norm(volume.detach().to(torch.float64), lam))


@register_penalty
class TVPenalty(Penalty):
    """``lam · TV_ε(x)``, smoothed isotropic total variation, differentiated by autograd."""

    name = "tv"

    def __init__(self, lam: float = 0.0, eps: float = 1e-4) -> None:
        super().__init__(lam)
        self.eps = float(eps)

    @classmethod
    def from_options(cls, lam=0.0, *, sequence="bh", q=0.1, tv_eps=1e-4) -> TVPenalty:
        return cls(lam, tv_eps)

    def smooth(self, volume: torch.Tensor) -> torch.Tensor:
        return self.lam * total_variation(volume, self.eps)


def make_penalty(
    name: str, lam: float = 0.0, *, sequence="bh", q: float = 0.1, tv_eps: float = 1e-4
) -> Penalty:
    """The penalty called ``name`` (one of :data:`PENALTIES`) with weight ``lam``."""
    if name not in PENALTIES:
        raise ValueError(f"unknown penalty {name!r}; use one of {', '.join(PENALTIES)}")
    return PENALTIES[name].from_options(lam, sequence=sequence, q=q, tv_eps=tv_eps)
