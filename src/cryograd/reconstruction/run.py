"""``cryograd.reconstruct``: particles in, a map with gold-standard half maps and FSC out.

The particles are split into two half sets (``rlnRandomSubset`` when present, else a seeded random
split); each half is reconstructed independently by the chosen method's solver
(:data:`cryograd.solvers.SOLVERS`), the FSC of the half maps is computed unmasked and with a soft
mask (the one given, or one made from the map) corrected by phase randomisation, the resolution is
read at FSC 0.143, and the final map is the full reconstruction weighted per shell by
``sqrt(2·FSC / (1 + FSC))``.

Methods (:mod:`cryograd.solvers`):

- ``direct``: Fourier insertion and Wiener division
  (:class:`~cryograd.solvers.direct.DirectSolver`). The Wiener term is ``(D/P)³ / snr`` for a
  constant ``snr`` (per Fourier voxel of the unpadded grid), ``λ D²/P³`` for an operator ``lam``,
  or by default RELION's ``1/τ²`` from the FSC of the half maps.
- ``cg``: ``(AᵀA + λI) x = Aᵀb`` per half and for the full set.
- ``adam`` / ``sgd``: minibatch optimisation per half (:mod:`cryograd.solvers.minibatch`); the
  full map is the mean of the two half maps.

``maxres``: frequencies beyond it are left out, the FSC curves are set to 0 beyond it and the
reported resolutions are never finer than it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cryograd.checks import check_halves
from cryograd.particles import read_particles
from cryograd.reconstruction.masks import load_mask
from cryograd.reconstruction.memory import check_memory
from cryograd.reconstruction.options import method_config, run_context, solver_for
from cryograd.reconstruction.resolution import assess_halves, max_shell_of
from cryograd.reconstruction.result import Result
from cryograd.reconstruction.robust import RobustConfig, robust_particle_weights
from cryograd.reconstruction.screening import screen_particles
from cryograd.reconstruction.selection import select_particles, split_into_halves
from cryograd.solvers.config import SolverConfig, check_positive
from cryograd.solvers.context import RunContext
from cryograd.solvers.particle_weights import check_particle_weights

__all__ = ["reconstruct"]

logger = logging.getLogger(__name__)


def reconstruct(
    particles,
    method: str = "direct",
    *,
    config: SolverConfig | None = None,
    context: RunContext | None = None,
    first: int | None = None,
    class_number: int | None = None,
    maxres: float | None = None,
    mask=None,
    progress: bool = True,
    local_filter: bool = True,
    skip_bad_particles: bool = False,
    **options,
) -> Result:
    """Reconstruct a map from particles with poses, with gold-standard half maps and FSC.

    Parameters
    ----------
    particles
        :class:`cryograd.particles.ParticleSet` (or a path, read with ``read_particles``).
    method
        A name in :data:`cryograd.solvers.SOLVERS`: ``"direct"``, ``"cg"``, ``"adam"``, ``"sgd"``.
    config
        The method's config (:class:`~cryograd.solvers.config.DirectConfig`,
        :class:`~cryograd.solvers.config.CGConfig`,
        :class:`~cryograd.solvers.config.GradientConfig`); options named like its fields override
        it. Without one, the options make it: ``projector``, ``pad``, ``batch_size``, ``seed``,
        ``snr``, ``lam`` (all methods); ``refine`` (direct, adam/sgd); ``tol``, ``max_iter`` (cg);
        ``epochs``, ``lr``, ``loss``, ``penalty``, ``sorted_l1_sequence``, ``sorted_l1_q``,
        ``huber_delta``, ``val_fraction``, ``patience``, ``init``, ``lr_schedule``,
        ``checkpoint_dir``, ``resume`` (adam/sgd). Options of other methods are ignored.
    context
        :class:`~cryograd.solvers.context.RunContext`; without one, the options ``device``
        (``"auto"``, ``"cpu"``, ``"cuda[:N]"``), ``dtype`` (float32 or float64), ``use_ctf``
        (False reconstructs without CTF correction), ``sym`` (``C1``, ``Cn``, ``Dn``, ``T``,
        ``O``, ``I``: poses are expanded by it) and ``comm`` (default: one process) make it.
    first, class_number
        Use the first N particles / those of one ``rlnClassNumber``.
    maxres
        Leave out frequencies beyond this resolution in Å.
    mask
        ``(D, D, D)`` array, a path to an MRC mask, or None (soft mask from the map).
    progress
        Show progress bars (main process only).
    local_filter
        Filter the map by the half maps' local agreement
        (:func:`~cryograd.reconstruction.local_filter.local_wiener_filter`); False: weight it
        per shell by the FSC (``sqrt(2·FSC / (1 + FSC))``). The half maps are never filtered.
    skip_bad_particles
        Leave out particles whose image is non-finite, constant or has a corrupt pixel
        (:mod:`cryograd.checks`) instead of refusing the set.
    options
        Also ``robust``: a :class:`~cryograd.reconstruction.robust.RobustConfig` weighs every
        particle by how well its half's map explains it (:mod:`cryograd.reconstruction.robust`;
        weights and scores in ``result.robust``). Fixed weights go in the context
        (``RunContext.with_weights``); the robust ones multiply them.

    Returns
    -------
    Result
    """
    robust: RobustConfig | None = options.pop("robust", None)
    solver = solver_for(method)
    config = method_config(method, config, options)
    context = run_context(context, options)
    check_positive("maxres", maxres)
    if isinstance(particles, str | Path):
        particles = read_particles(particles)
    t_start = time.perf_counter()
    idx = _selected(particles, first, class_number, context, skip_bad_particles)
    d = int(particles.box_size)
    px = float(particles.pixel_size_angstrom)
    max_shell = max_shell_of(maxres, d, px)
    mask_t = load_mask(mask, d)
    _check_memory(d, method, config, context, robust is not None)
    halves, from_file = split_into_halves(particles, idx, config.seed)
    check_halves(particles, halves)
    params = _parameters(method, config, context, maxres, halves, from_file)
    params["map_filter"] = "local-wiener" if local_filter else "fsc-weight"
    sizes = (len(halves[0]), len(halves[1]))
    logger.info(
        "%s reconstruction of %d particles (box %d, %.4g Å/px), halves %d + %d",
        method,
        len(idx),
        d,
        px,
        *sizes,
    )
    context, outcome = _weighted_context(
        particles, halves, context, robust, pad=config.pad, max_shell=max_shell,
        progress=progress, keep_insertions=method == "direct",
    )  # fmt: skip
    maps = solver.solve_halves(
        particles, halves, config, context, max_shell=max_shell, progress=progress
    )
    params.update(maps.parameters)
    result = assess_halves(
        maps,
        px,
        mask_t,
        config.seed,
        method,
        len(idx),
        params,
        maxres=maxres,
        max_shell=max_shell,
        local_filter=local_filter,
    )
    if outcome is not None:
        result.robust = outcome
        result.parameters["robust"] = outcome.summary()
        result.timings["robust"] = outcome.seconds
    result.timings["total"] = time.perf_counter() - t_start
    return result


def _selected(particles, first, class_number, context, skip_bad: bool) -> np.ndarray:
    """The particles to use: ``first`` / ``class_number`` selection, then the input screening
    (:mod:`cryograd.reconstruction.screening`)."""
    idx = select_particles(
        particles, first=first, class_number=class_number, use_ctf=context.use_ctf
    )
    idx = screen_particles(
        particles, idx, use_ctf=context.use_ctf, skip_bad=skip_bad, comm=context.comm
    )
    return idx


def _check_memory(d: int, method: str, config, context, robust: bool = False) -> None:
    """Refuse a run that does not fit the device (:func:`check_memory`)."""
    refine = int(getattr(config, "refine", 0) or 0)
    check_memory(
        d,
        method,
        config.pad,
        config.batch_size or 256,
        context.device,
        context.dtype,
        refine=refine,
        robust=robust,
    )


def _weighted_context(
    particles, halves, context, robust, *, pad, max_shell, progress, keep_insertions=False
):
    """The context with the particles' weights (fixed ones checked, robust ones computed), and
    the :class:`~cryograd.reconstruction.robust.RobustOutcome` (None without ``robust``).
    ``keep_insertions``: the robust step's last insertion sums go on in the context
    (``RunContext.half_insertions``, for ``direct``)."""
    if context.particle_weights is not None:
        w = check_particle_weights(context.particle_weights, len(particles))
        context = context.with_weights(w)
    if robust is None:
        return context, None
    outcome = robust_particle_weights(
        particles,
        halves,
        context,
        robust,
        pad=pad,
        max_shell=max_shell,
        progress=progress,
        keep_insertions=keep_insertions,
    )
    kept, outcome.insertions = outcome.insertions, None
    return context.with_weights(outcome.weights).with_half_insertions(kept), outcome


def _parameters(method, config, context, maxres, halves, from_file) -> dict:
    """The settings recorded in ``run.json``."""
    params = dict(
        method=method,
        projector=config.projector,
        pad=config.pad,
        device=str(context.device),
        dtype=str(context.dtype).replace("torch.", ""),
        batch_size=config.batch_size,
        sym=context.sym,
        seed=config.seed,
        maxres=maxres,
        snr=config.snr,
        lam=config.lam,
        use_ctf=context.use_ctf,
        particles=len(halves[0]) + len(halves[1]),
        half_sizes=[len(halves[0]), len(halves[1])],
        half_sets="rlnRandomSubset" if from_file else "random",
    )
    params.update(config.recorded())
    return params
