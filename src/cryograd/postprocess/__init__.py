"""Post-processing of two half maps, as ``relion_postprocess`` and ``relion_mask_create`` do it.

- :mod:`~cryograd.postprocess.masks`: ``create_mask`` (low-pass, threshold, extend, soft edge);
- :mod:`~cryograd.postprocess.sharpen`: Guinier plot and B-factor fit, MTF, FSC weighting;
- :mod:`~cryograd.postprocess.locres`: local resolution by sliding soft spheres;
- :mod:`~cryograd.postprocess.run`: ``postprocess`` (all of it) and its result;
- :mod:`~cryograd.postprocess.outputs`: the files of ``cryograd postprocess``.
"""

from __future__ import annotations

from cryograd.postprocess.filters import lowpass_map, lowpass_weights
from cryograd.postprocess.locres import LocalResolution, LocresConfig, local_resolution
from cryograd.postprocess.masks import create_mask, sphere_mask
from cryograd.postprocess.run import PostprocessConfig, PostprocessResult, postprocess
from cryograd.postprocess.sharpen import (
    MTF,
    fit_guinier,
    guinier_curve,
    read_mtf,
)

__all__ = [
    "MTF",
    "LocalResolution",
    "LocresConfig",
    "PostprocessConfig",
    "PostprocessResult",
    "create_mask",
    "fit_guinier",
    "guinier_curve",
    "local_resolution",
    "lowpass_map",
    "lowpass_weights",
    "postprocess",
    "read_mtf",
    "sphere_mask",
]
