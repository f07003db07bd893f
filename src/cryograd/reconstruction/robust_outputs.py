"""The files of a ``--robust`` run: scored particles, kept particles, the weights' figure.

``particles_scored.star``: the input set with every column plus ``rlnCryogradWeight`` (0–1) and
``rlnCryogradScore`` (the standardised loss, ≥ 0, larger is worse explained; -1 for particles
not used); ``particles_kept.star`` (with ``keep_above``): the particles weighing more than it;
``robust_weights.png``: the histogram of the weights and the weights against defocus. Each is
written atomically, into the folder :meth:`~cryograd.reconstruction.result.Result.save` writes
(the command line's staging folder).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from cryograd.io.star import write_star
from cryograd.plots import save_figure_atomic

__all__ = ["write_robust_outputs", "scored_particles", "weights_figure"]

WEIGHT_COLUMN = "rlnCryogradWeight"
SCORE_COLUMN = "rlnCryogradScore"


def scored_particles(outcome):
    """The outcome's particle set with the weight and score columns added to its others."""
    ps = outcome.particles
    extra = ps.extra_columns
    extra = pd.DataFrame(index=range(len(ps))) if extra is None else extra.copy()
    extra[WEIGHT_COLUMN] = np.round(outcome.weights, 6)
    extra[SCORE_COLUMN] = np.round(outcome.scores, 4)
    return replace(ps, extra_columns=extra.reset_index(drop=True))


def weights_figure(outcome):
    """Figure: histogram of the used particles' weights; weight against mean defocus."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    w = outcome.weights[outcome.used]
    ax1.hist(w, bins=40, range=(0, 1), color="tab:blue")
    ax1.set_xlabel("weight")
    ax1.set_ylabel("particles")
    ax1.set_title(f"{outcome.config.rule}: {outcome.fraction_down_weighted():.1%} below 0.5")
    ps = outcome.particles
    if ps.ctf is not None:
        df = 0.5 * (ps.ctf[:, 0] + ps.ctf[:, 1])[outcome.used] / 1e4
        ax2.scatter(df, w, s=3, alpha=0.4)
        ax2.set_xlabel("mean defocus (µm)")
    else:
        ax2.scatter(np.arange(len(w)), w, s=3, alpha=0.4)
        ax2.set_xlabel("particle")
    ax2.set_ylabel("weight")
    ax2.set_ylim(-0.05, 1.05)
    return fig


def write_robust_outputs(folder: str | Path, outcome, names: dict[str, str]) -> dict[str, Path]:
    """Write the robust files into ``folder`` under ``names`` (keys ``scored_star``,
    ``kept_star``, ``robust_png``: :data:`~cryograd.reconstruction.result.OUTPUT_FILES`);
    returns key -> path."""
    out = Path(folder)
    scored = scored_particles(outcome)
    paths = {"scored_star": write_star(out / names["scored_star"], scored)}
    keep = outcome.config.keep_above
    if keep is not None:
        rows = np.nonzero(outcome.used & (outcome.weights > float(keep)))[0]
        paths["kept_star"] = write_star(out / names["kept_star"], scored.subset(rows))
    paths["robust_png"] = save_figure_atomic(weights_figure(outcome), out / names["robust_png"])
    return paths
