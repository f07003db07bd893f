"""The files of ``cryograd postprocess``, each written atomically (temporary name, then rename)."""

from __future__ import annotations

import json
from pathlib import Path

from cryograd.io.atomic import atomic_path
from cryograd.io.mrc import write_map
from cryograd.plots import plot_fsc_result
from cryograd.postprocess.plots import plot_guinier, plot_locres_histogram

__all__ = ["write_outputs", "OUTPUT_NAMES"]

OUTPUT_NAMES = (
    "postprocess.mrc",
    "postprocess_masked.mrc",
    "mask.mrc",
    "locres.mrc",
    "locres_filtered.mrc",
    "postprocess.json",
    "fsc.csv",
    "fsc.png",
    "guinier.png",
    "locres_histogram.png",
)


def write_outputs(result, outdir, *, extra: dict | None = None) -> list[Path]:
    """Write a :class:`~cryograd.postprocess.run.PostprocessResult` into ``outdir`` (made if
    needed): ``postprocess.mrc``, ``postprocess_masked.mrc`` and ``mask.mrc`` (with a mask),
    ``locres.mrc``, ``locres_filtered.mrc`` and ``locres_histogram.png`` (with local resolution),
    ``postprocess.json`` (``extra`` merged in), ``fsc.csv``, ``fsc.png``, ``guinier.png``.
    Returns the paths written."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    apix = result.pixel_size
    written = [write_map(out / "postprocess.mrc", result.sharpened, apix)]
    if result.mask is not None:
        written.append(write_map(out / "postprocess_masked.mrc", result.sharpened_masked, apix))
        written.append(write_map(out / "mask.mrc", result.mask, apix))
    if result.locres is not None:
        written.append(write_map(out / "locres.mrc", result.locres.locres_angstrom, apix))
        written.append(write_map(out / "locres_filtered.mrc", result.locres.filtered, apix))
        written.append(
            plot_locres_histogram(
                out / "locres_histogram.png",
                result.locres.locres_angstrom.numpy(),
                None if result.mask is None else result.mask.numpy(),
            )
        )
    written.append(result.fsc.to_csv(out / "fsc.csv"))
    written.append(plot_fsc_result(out / "fsc.png", result.fsc, title="postprocess"))
    written.append(plot_guinier(out / "guinier.png", result))
    summary = {**(extra or {}), **result.to_dict()}
    with atomic_path(out / "postprocess.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    written.append(out / "postprocess.json")
    return written
