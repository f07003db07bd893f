"""From half maps to a validated result: FSC (masked, corrected), its resolution limit, the
FSC-weighted full map."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from cryograd.reconstruction.local_filter import local_wiener_filter
from cryograd.reconstruction.result import Result
from cryograd.solvers.registry import HalfMaps
from cryograd.validation import (
    FSCResult,
    apply_shell_weights,
    compute_fsc_result,
    fsc_weight,
    resolution_at,
    soft_mask_from_map,
)

__all__ = ["assess_halves", "limit_fsc_result", "max_shell_of"]


def max_shell_of(maxres: float | None, box_size: int, pixel_size: float) -> int | None:
    """The last Fourier shell (``D``-grid units) at or below ``maxres`` Å, or None."""
    if maxres is None:
        return None
    return int(min(box_size // 2, math.floor(box_size * pixel_size / maxres)))


def limit_fsc_result(
    result: FSCResult, max_shell: int, maxres_angstrom: float, box: int, pixel_size: float
) -> FSCResult:
    """The FSC of maps limited to ``max_shell`` (``maxres``): the curves are 0 beyond it (those
    frequencies were left out, whatever leaks there through gridding or masking carries no
    information), and the resolutions are no better than ``maxres_angstrom``, the best the run
    could show."""

    def cut(curve):
        if curve is None:
            return None
        out = np.array(curve, dtype=np.float64, copy=True)
        out[max_shell + 1 :] = 0.0
        return out

    fields = {
        k: cut(getattr(result, k))
        for k in ("fsc_unmasked", "fsc_masked", "fsc_corrected", "fsc_randomized_masked")
    }
    final = (
        fields["fsc_corrected"] if fields["fsc_corrected"] is not None else (fields["fsc_unmasked"])
    )
    r143 = max(resolution_at(final, 0.143, box, pixel_size), maxres_angstrom)
    r05 = max(resolution_at(final, 0.5, box, pixel_size), maxres_angstrom)
    extra = dict(result.extra, maxres_angstrom=maxres_angstrom, max_shell=int(max_shell))
    return dataclasses.replace(
        result, **fields, resolution_143_angstrom=r143, resolution_05_angstrom=r05, extra=extra
    )


def assess_halves(
    maps: HalfMaps,
    pixel_size: float,
    mask: torch.Tensor | None,
    seed: int,
    method: str,
    n_particles: int,
    parameters: dict,
    *,
    maxres: float | None = None,
    max_shell: int | None = None,
    local_filter: bool = True,
) -> Result:
    """The :class:`Result` of a solver's half maps: the FSC of the halves, unmasked and with
    ``mask`` (a soft mask from the full map when None) corrected by phase randomisation (seeded
    with ``seed``), limited to ``max_shell``, and the full map filtered by the halves' local
    agreement (:func:`~cryograd.reconstruction.local_filter.local_wiener_filter`), or with
    ``local_filter`` False weighted per shell by ``sqrt(2·FSC / (1 + FSC))``."""
    t0 = time.perf_counter()
    # the maps in their own precision (float32 by default): the FSC's transforms run in it, its
    # shell sums in float64 (:func:`cryograd.validation.fsc`); no float64 copies of three maps
    h1, h2, full = (m.detach().to("cpu") for m in (maps.half1, maps.half2, maps.full))
    if mask is None:
        try:
            mask = soft_mask_from_map(full)
        except ValueError:
            mask = None
    result = compute_fsc_result(h1, h2, pixel_size, mask=mask, seed=seed)
    if max_shell is not None and maxres is not None:
        result = limit_fsc_result(result, max_shell, float(maxres), h1.shape[-1], pixel_size)
    maps.timings["fsc"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    weighted = full
    if local_filter:
        on_device = (m.detach() for m in (maps.half1, maps.half2, maps.full))
        weighted = local_wiener_filter(*on_device).to("cpu")
    weighted = apply_shell_weights(weighted.to(torch.float64), fsc_weight(result.fsc_final))
    maps.timings["map_filter"] = time.perf_counter() - t0
    return Result(
        map=weighted.float(),
        full_map=full.float(),
        half_maps=(h1.float(), h2.float()),
        fsc=result,
        resolution_angstrom=float(result.resolution_143_angstrom),
        pixel_size_angstrom=pixel_size,
        method=method,
        n_particles=n_particles,
        mask=None if mask is None else mask.float(),
        history=maps.history,
        timings=maps.timings,
        parameters=parameters,
    )
