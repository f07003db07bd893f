"""``--robust``: per-particle weights from how well each half's map explains its particles (IRLS).

Junk in a stack (ice or carbon edges, aggregates, empty noise, other molecules, wrong poses) is
junk per *particle*, so the robust step acts on whole particles. Each half ``k`` runs its rounds
on its own; each round:

1. the half's map is the weighted direct reconstruction of half ``k``'s particles (Fourier
   insertion with the current weights, small Wiener term: cheap, whatever the method). The
   insertion sums are kept from round to round and updated by inserting only the particles whose
   weight changed (insertion is linear in the weights), the positive and negative changes apart;
2. every particle of half ``k`` is scored against its projection of that map with its own
   contribution taken out (leave-one-out,
   :func:`~cryograd.reconstruction.robust_scores.self_fraction`), so that a particle cannot
   explain itself (:mod:`cryograd.reconstruction.robust_scores`: amplitude along the prediction
   in standard errors of its own noise, band power against that noise), standardised robustly
   within the half against the particles with a significant amplitude;
3. a robust rule maps those losses to weights in ``[0, 1]``
   (:mod:`cryograd.reconstruction.robust_rules`).

After its rounds the chosen method reconstructs with the weights (direct/cg: in the insertion's
numerator and ``c²`` weights; adam/sgd: on the per-particle loss; see
:mod:`cryograd.solvers.particle_weights`); ``direct`` takes the robust step's sums brought up to
the final weights instead of inserting again. Half ``k``'s weights (and its number of rounds)
depend on half ``k``'s particles only, so the half maps stay independent and the FSC stays a gold
standard.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from cryograd.errors import CryogradError
from cryograd.reconstruction.robust_rules import DEFAULT_RULE, ROBUST_RULES, robust_weights
from cryograd.reconstruction.robust_scores import (
    LeaveOneOut,
    fit_statistics,
    standardized_losses,
)
from cryograd.solvers.context import RunContext
from cryograd.solvers.direct import wiener_reconstruct
from cryograd.solvers.division import default_regularizer
from cryograd.solvers.insertion import FourierInsertion, insert_in_context

__all__ = ["RobustConfig", "RobustOutcome", "robust_particle_weights", "DOWN_WEIGHTED"]

logger = logging.getLogger(__name__)

DOWN_WEIGHTED = 0.5
"""Weights below this count as down-weighted (``run.json``'s ``fraction_down_weighted``)."""

AUTO_SECOND_ROUND = 0.1
"""``rounds=None``: a second round for a half whose first down-weights more than this of it."""

CHANGE_TOL = 1e-6
"""Weight changes up to this are not re-inserted between rounds."""


@dataclass(frozen=True)
class RobustConfig:
    """Settings of ``--robust``.

    Attributes
    ----------
    rule
        A name in :data:`~cryograd.reconstruction.robust_rules.ROBUST_RULES`.
    rounds
        IRLS rounds (scoring passes per half), at least 1; None (``auto``, the default): one
        round, and a second for a half whose first down-weights more than
        :data:`AUTO_SECOND_ROUND` of it (junk is there: re-score against the re-weighted map). A
        clean set (about 1 % of its particles below weight 0.5 by chance) costs one round.
    band
        The scoring band's top shell as a fraction of Nyquist, in ``(0, 1]``.
    keep_above
        Also write ``particles_kept.star`` with the particles weighing more than this, or None.
    """

    rule: str = DEFAULT_RULE
    rounds: int | None = None
    band: float = 0.75
    keep_above: float | None = None

    def __post_init__(self) -> None:
        if self.rule not in ROBUST_RULES:
            raise CryogradError(
                f"robust_rule must be one of {', '.join(ROBUST_RULES)}, got {self.rule!r}"
            )
        r = self.rounds
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise CryogradError(f"robust_rounds must be an integer ≥ 1, got {self.rounds!r}")
        if not 0 < float(self.band) <= 1:
            raise CryogradError(f"robust_band must be in (0, 1], got {self.band}")
        k = self.keep_above
        if k is not None and not (np.isfinite(k) and 0 <= float(k) <= 1):
            raise CryogradError(f"keep_above must be in [0, 1], got {k}")

    def recorded(self) -> dict:
        """The settings for ``run.json``."""
        return {"rule": self.rule, "rounds": self.rounds or "auto", "band": self.band}


@dataclass
class RobustOutcome:
    """Weights and scores of every particle of the set.

    Attributes
    ----------
    weights
        ``(N,)`` in ``[0, 1]`` (0 for particles not used: not selected, screened out).
    scores
        ``(N,)`` standardised losses (≥ 0, in the good particles' standard deviations; larger is
        worse explained), -1 for particles not used.
    used
        ``(N,)`` bool: the particle was in a half set.
    config
        The settings.
    history
        Per round: fraction down-weighted per half.
    particles
        The set (for ``particles_scored.star``).
    seconds
        Wall time of the robust step.
    insertions
        With ``keep_insertions``: the two halves' insertion sums with :attr:`weights`, else None.
    """

    weights: np.ndarray
    scores: np.ndarray
    used: np.ndarray
    config: RobustConfig
    history: list = field(default_factory=list)
    particles: object = None
    seconds: float = 0.0
    insertions: tuple | None = None

    def fraction_down_weighted(self) -> float:
        """Fraction of the used particles with weight below :data:`DOWN_WEIGHTED`."""
        w = self.weights[self.used]
        return float(np.mean(w < DOWN_WEIGHTED)) if len(w) else 0.0

    def summary(self) -> dict:
        """The record for ``run.json``."""
        w = self.weights[self.used]
        return {
            **self.config.recorded(),
            "fraction_down_weighted": self.fraction_down_weighted(),
            "mean_weight": float(np.mean(w)) if len(w) else None,
            "rounds_history": self.history,
            "seconds": self.seconds,
        }


def robust_particle_weights(
    particles,
    halves: tuple[np.ndarray, np.ndarray],
    context: RunContext,
    config: RobustConfig,
    *,
    pad: float = 2.0,
    max_shell: int | None = None,
    progress: bool = True,
    keep_insertions: bool = False,
) -> RobustOutcome:
    """IRLS weights of every particle, each half from its own map and particles only.

    Parameters
    ----------
    particles
        The set with poses.
    halves
        The two half sets' indices.
    context
        Where to compute; its ``particle_weights`` (prior weights, e.g. ``--weight-column``)
        multiply the robust ones.
    config
        :class:`RobustConfig`.
    pad, max_shell
        Of the insertion (as the method's).
    keep_insertions
        Bring each half's insertion up to the final weights (inserting the last round's weight
        changes only) and return it in :attr:`RobustOutcome.insertions`: ``direct`` then need not
        insert again. Both halves' sums are then held at once (the memory planner counts it).

    Returns
    -------
    RobustOutcome
    """
    t0 = time.perf_counter()
    n = len(particles)
    d = int(particles.box_size)
    prior = context.particle_weights
    scores = np.full(n, -1.0)
    used = np.zeros(n, dtype=bool)
    band = max(2, int(round(config.band * d / 2)))
    if max_shell is not None:
        band = max(2, min(band, int(max_shell)))
    history: list[dict] = []
    robust = np.ones(n)
    kept = []
    for k, half in enumerate(halves, start=1):
        half = np.asarray(half, dtype=np.int64)
        used[half] = True
        step = _HalfStep(particles, half, context, pad, max_shell, band, progress)
        for r, row in enumerate(step.rounds(robust, scores, config, f"half{k}")):
            if r == len(history):
                history.append({})
            history[r].update(row)
        if keep_insertions:
            kept.append(step.final_insertion(_combined(prior, robust), f"robust: half{k} final"))
        del step
    for r, row in enumerate(history):
        logger.info("robust round %d (%s): %s", r + 1, config.rule, row)
    weights = _combined(prior, robust)
    weights[~used] = 0.0
    seconds = time.perf_counter() - t0
    insertions = tuple(kept) if keep_insertions else None
    return RobustOutcome(weights, scores, used, config, history, particles, seconds, insertions)


@dataclass
class _HalfStep:
    """The IRLS rounds of one half: its insertion kept from round to round, and updated by
    inserting only the particles whose weight changed (insertion is linear in the weights:
    ``N(w') = N(w) + insert(w' − w)``, the positive and negative changes inserted apart)."""

    particles: object
    half: np.ndarray
    context: RunContext
    pad: float
    max_shell: int | None
    band: int
    progress: bool
    insertion: FourierInsertion | None = None
    inserted: np.ndarray | None = None  # the insertion's weights (None: 1)

    def rounds(self, robust: np.ndarray, scores: np.ndarray, config: RobustConfig, name: str):
        """Run the rounds, updating ``robust`` and ``scores`` of the half in place; yields one
        ``{name_down_weighted: fraction}`` per round."""
        prior = self.context.particle_weights
        for r in range(config.rounds or 2):
            now = None if (r == 0 and prior is None) else _combined(prior, robust)
            desc = f"robust {r + 1}: {name}"
            ins = self._weighted(now, desc)
            rho = default_regularizer(ins)
            vol = wiener_reconstruct(ins, rho, max_shell=self.max_shell)
            fit = fit_statistics(
                self.particles,
                self.half,
                vol,
                band_shell=self.band,
                device=self.context.device,
                dtype=self.context.dtype,
                use_ctf=self.context.use_ctf,
                pad=self.pad,
                progress=self.progress,
                desc=f"{desc} score",
                leave_one_out=LeaveOneOut(ins.weights, rho, now),
            )
            del vol
            good = None if r == 0 else robust[self.half] >= DOWN_WEIGHTED
            losses = standardized_losses(fit, good)
            robust[self.half] = robust_weights(losses, config.rule)
            scores[self.half] = losses
            down = float(np.mean(robust[self.half] < DOWN_WEIGHTED))
            yield {f"{name}_down_weighted": down}
            if config.rounds is None and down <= AUTO_SECOND_ROUND:
                return

    def final_insertion(self, weights: np.ndarray, desc: str) -> FourierInsertion:
        """The half's insertion with ``weights`` (``(N,)``), handed over (no longer held)."""
        ins = self._weighted(weights, desc)
        self.insertion = None
        return ins

    def _weighted(self, weights: np.ndarray | None, desc: str) -> FourierInsertion:
        """The half's insertion with ``weights`` (None: 1): inserted the first time, then
        updated by the changes."""
        if self.insertion is None:
            self.insertion = self._insert(self.half, weights, f"{desc} insert")
        else:
            assert weights is not None
            self._update(self.insertion, self.inserted, weights, f"{desc} update")
        self.inserted = weights
        return self.insertion

    def _insert(self, indices: np.ndarray, weights: np.ndarray | None, desc: str):
        return insert_in_context(
            self.particles,
            indices,
            self.context.with_weights(weights),
            pad=self.pad,
            max_shell=self.max_shell,
            progress=self.progress,
            desc=desc,
        )

    def _update(self, ins, before: np.ndarray | None, after: np.ndarray, desc: str) -> None:
        """``ins`` (inserted with weights ``before``, None: 1) to weights ``after``, in place."""
        n = len(after)
        change = after - (np.ones(n) if before is None else before)
        for sign in (1.0, -1.0):
            part = np.clip(sign * change, 0.0, None)
            rows = self.half[part[self.half] > CHANGE_TOL]
            if len(rows) == 0:
                continue
            delta = self._insert(rows, part, f"{desc} {'+' if sign > 0 else '−'}")
            ins.numerator.add_(delta.numerator, alpha=sign)
            ins.weights.add_(delta.weights, alpha=sign)
            del delta


def _combined(prior: np.ndarray | None, robust: np.ndarray) -> np.ndarray:
    return robust.copy() if prior is None else np.asarray(prior, dtype=np.float64) * robust
