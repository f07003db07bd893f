"""Direct reconstruction: Wiener division of the Fourier insertion sums (RELION's ``--ctf``).

From the insertion sums ``N`` and ``W`` of :mod:`cryograd.solvers.insertion` the map is

    x = gridding_correction( crop( irfftn_centered( N / (W + ρ) ) ) )

with the Wiener term ``ρ`` (``wiener_rho``, in the units of ``W``) a constant, or per shell
RELION's ``1/τ²`` from a half-map FSC (:func:`cryograd.validation.inverse_tau2_from_fsc`), or
``ρ = λ D² / P³`` to match the operator regulariser ``λ`` of ``(AᵀA + λI) x = Aᵀb``
(:func:`~cryograd.solvers.insertion.lam_to_wiener`, used by the CG comparison). The user-facing
``snr`` of :class:`~cryograd.solvers.config.DirectConfig` becomes ``ρ = (D/P)³ / snr`` in
:func:`~cryograd.solvers.config.wiener_rho`, and nowhere else.

Low frequencies: the division estimates every voxel of the padded grid on its own, from the
samples that fall within one voxel of it. Along each slice the samples lie ``P / D`` (= 2 for
``--pad 2``) voxels apart, so the voxels at ``0 < |q| < P / D`` next to the origin see only
samples of the first ring (``|k| = 1``), never the origin's: they are estimated low (the map's
spectrum falls fast there), and after cropping to the box the map's mean comes out 30–40 % low
(``--pad 3``: ~60 %), while shells ``≥ 1`` are right. This is a property of the plain division
(it is RELION's ``relion_reconstruct --skip_gridding``), not of the Wiener term, the weight of the
DC sample or the ``kx = 0`` duplicates (noiseless, CTF-free data: the DC voxel ``N/W`` is the
images' DC exactly, shells 1–5 are within 5 %). So the map's ``k = 0`` term is set from that
voxel (:func:`~cryograd.solvers.insertion.with_data_mean`): exact, no added noise, no support
constraint. RELION uses Pipe–Menon density compensation when asked (``--dont_skip_gridding``);
:func:`cryograd.solvers.krylov.refine_in_box` (a few preconditioned CG steps on the same system,
confined to the sphere inscribed in the box) is the other cure here, optional (``refine``, 0 by
default): it zeroes whatever the data hold outside that sphere (a filament through the box, a
solvent level, neighbouring density), which costs more than it gains on deposited maps.
The full map is filtered afterwards by the halves' local agreement
(:mod:`cryograd.reconstruction.local_filter`), which is what removes the solvent's noise.

Scaling: with :class:`cryograd.forward.ForwardModel`'s Fourier projector, ``Aᵀb`` is
``(P³ / D²) · G · crop · irfftn(N)`` and ``AᵀA ≈ (P³ / D²) · G · crop · irfftn(W ·)`` (``G`` the
gridding correction), hence the factor in :func:`~cryograd.solvers.insertion.lam_to_wiener`.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from cryograd.projectors import fourier_slice as fs
from cryograd.solvers.config import DirectConfig, check_non_negative, check_positive, wiener_rho
from cryograd.solvers.context import CONTEXT_FIELDS, RunContext
from cryograd.solvers.division import default_regularizer, divide_and_invert, weight_shell_sums
from cryograd.solvers.insertion import (
    FourierInsertion,
    band_limit,
    insert_halves_in_context,
    insert_in_context,
    lam_to_wiener,
    with_data_mean,
)
from cryograd.solvers.krylov import refine_in_box
from cryograd.solvers.registry import HalfMaps, register_solver
from cryograd.validation import fsc, inverse_tau2_from_fsc

__all__ = [
    "DirectSolver",
    "wiener_reconstruct",
    "reconstruct_direct",
    "direct_start",
    "refine_map",
]

logger = logging.getLogger(__name__)


def wiener_reconstruct(
    insertion: FourierInsertion,
    regularizer: float | torch.Tensor,
    *,
    max_shell: int | None = None,
    gridding: bool = True,
    data_mean: bool = True,
) -> torch.Tensor:
    """The map ``G · crop(irfftn(N / (W + ρ)))`` of an insertion, its mean from the data.

    Parameters
    ----------
    insertion
        The insertion sums.
    regularizer
        ``ρ``: a constant (``1 / snr``), or ``(D // 2 + 1,)`` values per shell (e.g. ``1/τ²``;
        samples beyond the last shell use its value).
    max_shell
        Zero the spectrum beyond this shell (``D``-grid units), e.g. for ``maxres``.
    gridding
        Apply the trilinear gridding correction (as the forward model does).
    data_mean
        Set the map's ``k = 0`` term from the origin's samples
        (:func:`~cryograd.solvers.insertion.with_data_mean`; False: as the crop leaves it).

    Returns
    -------
    torch.Tensor
        ``(D, D, D)`` real, the real dtype of the insertion.
    """
    p = insertion.padded
    # slab by slab (:mod:`cryograd.solvers.division`): at box 448 a padded grid is 1.4 GB
    volume = divide_and_invert(insertion, regularizer, max_shell=max_shell)
    if isinstance(regularizer, torch.Tensor) and regularizer.numel() > 1:
        rho0 = float(regularizer.reshape(-1)[0])
    else:
        rho0 = float(regularizer)
    if gridding:
        volume *= fs.gridding_weights(volume.shape[-1], p, device=volume.device, dtype=volume.dtype)
    if not data_mean:
        return volume
    return with_data_mean(volume, insertion, rho0)


def reconstruct_direct(
    particles,
    indices: np.ndarray | None = None,
    *,
    wiener_rho: float | None = None,
    lam: float | None = None,
    pad: float = 2.0,
    batch_size: int | None = None,
    max_shell: int | None = None,
    progress: bool = True,
    refine: int = 0,
    context: RunContext | None = None,
    **context_options,
) -> torch.Tensor:
    """One direct reconstruction of particles ``indices`` with a constant Wiener term.

    Give ``wiener_rho`` (``ρ`` itself, in the units of the weights) or ``lam`` (``ρ = λ D² / P³``,
    the ``λ`` of ``(AᵀA + λI) x = Aᵀb``); with neither, ``ρ = 1e-3 ·`` the mean weight inside
    Nyquist. For the gold-standard procedure with half maps and RELION's ``τ²`` use
    :func:`cryograd.reconstruct`. ``refine`` CG iterations in the box follow the division
    (:func:`cryograd.solvers.krylov.refine_in_box`). ``context`` (or the options ``device``, default
    ``"cpu"``, ``dtype``, ``use_ctf``, ``symmetry``, ``comm``) says where and how to compute.

    Returns
    -------
    torch.Tensor
        ``(D, D, D)``.
    """
    check_positive("wiener_rho", wiener_rho)
    check_non_negative("lam", lam)
    if wiener_rho is not None and lam is not None:
        raise ValueError("give wiener_rho or lam, not both")
    if context is None:
        context = _context(context_options)
    if indices is None:
        indices = np.arange(len(particles))
    ins = insert_in_context(
        particles,
        indices,
        context,
        pad=pad,
        batch_size=batch_size,
        max_shell=max_shell,
        progress=progress,
    )
    if wiener_rho is not None:
        reg = float(wiener_rho)
    elif lam is not None:
        reg = lam_to_wiener(lam, ins.box_size, ins.padded)
    else:
        reg = default_regularizer(ins)
    volume = wiener_reconstruct(ins, reg, max_shell=max_shell)
    if refine > 0:
        volume = refine_in_box(ins, reg, volume, iterations=refine)
    return volume


def _context(options: dict) -> RunContext:
    unknown = sorted(set(options) - set(CONTEXT_FIELDS))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {', '.join(unknown)}")
    return RunContext.from_options({"device": "cpu", **options})


def refine_map(
    insertion: FourierInsertion,
    regularizer: float | torch.Tensor,
    volume: torch.Tensor,
    iterations: int,
    max_shell: int | None = None,
) -> torch.Tensor:
    """:func:`~cryograd.solvers.krylov.refine_in_box` of a direct map, band-limited again to
    ``max_shell`` when given (0 iterations: the map as it is)."""
    if iterations <= 0:
        return volume
    out = refine_in_box(insertion, regularizer, volume, iterations=iterations)
    if max_shell is not None:
        out = band_limit(out, max_shell).to(volume.dtype)
    return out


def direct_start(
    particles,
    indices: np.ndarray,
    snr: float | None,
    progress: bool,
    *,
    pad: float,
    max_shell: int | None,
    refine: int,
    context: RunContext | None = None,
    **context_options,
) -> torch.Tensor:
    """Starting map of adam/sgd: the direct reconstruction of ``indices`` refined as the
    ``direct`` method refines its maps (constant Wiener term: the user-facing ``snr`` as
    ``direct`` reads it, :func:`~cryograd.solvers.config.wiener_rho`, or the small default
    term)."""
    if context is None:
        context = _context(context_options)
    ins = insert_in_context(
        particles,
        indices,
        context,
        pad=pad,
        max_shell=max_shell,
        progress=progress,
        desc="start map",
    )
    if snr is not None:
        reg = wiener_rho(snr, ins.box_size, ins.padded)
    else:
        reg = default_regularizer(ins)
    vol = wiener_reconstruct(ins, reg, max_shell=max_shell)
    return refine_map(ins, reg, vol, refine, max_shell)


class DirectSolver:
    """``direct``: Fourier insertion and Wiener division (refined in the box when ``refine``).

    The Wiener term is ``wiener_rho(snr)`` for a constant ``snr``, ``λ D²/P³`` for an operator
    ``lam``, or by default RELION's ``1/τ²`` from the FSC of the half maps reconstructed first
    with a tiny term (those halves, not Wiener-filtered but refined like the full map, are the
    half maps reported). The full map's grids are the sum of the halves' (one pass over the data).
    """

    name = "direct"
    config_type = DirectConfig

    def solve_halves(
        self,
        particles,
        halves: tuple[np.ndarray, np.ndarray],
        config: DirectConfig,
        context: RunContext,
        *,
        max_shell: int | None = None,
        progress: bool = True,
    ) -> HalfMaps:
        """The half maps and the full map (see :class:`~cryograd.solvers.registry.Solver`)."""
        out = HalfMaps(None, None, None, parameters={"refine": config.refine})  # type: ignore[arg-type]  # set below
        t0 = time.perf_counter()
        if context.half_insertions is not None:  # made by --robust with these weights
            ins = list(context.half_insertions)
        else:
            ins = insert_halves_in_context(
                particles,
                halves,
                context,
                pad=config.pad,
                batch_size=config.batch_size,
                max_shell=max_shell,
                progress=progress,
            )
        out.timings["insert"] = time.perf_counter() - t0
        if config.snr is not None or config.lam is not None:
            maps = self._constant(ins, config, max_shell, out)
        else:
            maps = self._tau2(ins, config, max_shell, out)
        out.half1, out.half2, out.full = maps
        return out

    @staticmethod
    def _constant(ins, config: DirectConfig, max_shell, out: HalfMaps) -> list:
        """Every map with the same constant Wiener term, then the same refinement."""
        t0 = time.perf_counter()
        d, p = ins[0].box_size, ins[0].padded
        if config.snr is not None:
            reg = wiener_rho(config.snr, d, p)
        else:
            reg = lam_to_wiener(config.lam or 0.0, d, p)
        out.history["wiener"] = {"kind": "constant", "value": reg}
        maps = [wiener_reconstruct(i, reg, max_shell=max_shell) for i in ins]
        if config.refine > 0:  # the halves' own grids are needed again
            grids: tuple = (ins[0], ins[1], ins[0] + ins[1])
        else:  # the full set's grids in place of half 1's, half 2's released
            grids = (ins[0].accumulate_(ins[1]),)
            del ins[:]
        maps.append(wiener_reconstruct(grids[-1], reg, max_shell=max_shell))
        out.timings["divide"] = time.perf_counter() - t0
        if config.refine <= 0:
            return maps
        t0 = time.perf_counter()
        # every map, half maps included, gets the same refinement (the plain division's are low)
        maps = [refine_map(i, reg, m, config.refine, max_shell) for i, m in zip(grids, maps)]
        out.timings["refine"] = time.perf_counter() - t0
        return maps

    @staticmethod
    def _tau2(ins, config: DirectConfig, max_shell, out: HalfMaps) -> list:
        """RELION's τ²: the FSC of halves divided with a tiny term, then ``1/τ²`` per shell for
        the full map."""
        t0 = time.perf_counter()
        tiny = [default_regularizer(i) for i in ins]
        pre = [wiener_reconstruct(i, t, max_shell=max_shell) for i, t in zip(ins, tiny)]
        f0 = fsc(pre[0], pre[1])
        if config.refine > 0:  # the halves' own grids are needed again
            full_ins = ins[0] + ins[1]
        else:  # the full set's grids in place of half 1's, half 2's released
            full_ins = ins[0].accumulate_(ins[1])
            del ins[:]
        sums, counts = weight_shell_sums(full_ins)
        reg_full = inverse_tau2_from_fsc(f0, sums, counts, whole_instead_of_half=True)
        out.history["wiener"] = {"kind": "tau2", "fsc_prior": [float(x) for x in f0]}
        # the FSC (and the half maps written) come from the unfiltered halves, as in RELION;
        # the τ² Wiener filter is for the full map
        full = wiener_reconstruct(full_ins, reg_full, max_shell=max_shell)
        out.timings["divide"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = refine_map(full_ins, reg_full, full, config.refine, max_shell)
        # the half maps get the same refinement (when asked), each from its own data only
        halves_out = pre
        if config.refine > 0:
            halves_out = [
                refine_map(i, t, m, config.refine, max_shell) for i, t, m in zip(ins, tiny, pre)
            ]
        out.timings["refine"] = time.perf_counter() - t0
        return [halves_out[0], halves_out[1], full]


register_solver(DirectSolver())
