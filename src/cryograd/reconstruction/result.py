"""The result of a reconstruction, its JSON record, and the names of every output file.

:data:`OUTPUT_FILES` is the one list of what a run writes into its folder: :meth:`Result.save`
writes those names and ``cryograd reconstruct`` checks a folder for them (``check_outdir``).
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryograd import __version__
from cryograd.io.atomic import atomic_path
from cryograd.io.mrc import write_map
from cryograd.plots import plot_fsc_result, plot_loss
from cryograd.reconstruction.robust_outputs import write_robust_outputs
from cryograd.validation import FSCResult

__all__ = [
    "Result",
    "OUTPUT_FILES",
    "LOG_FILE",
    "CHECKPOINT_PATTERN",
    "checkpoint_name",
    "json_safe",
    "write_json_atomic",
]

OUTPUT_FILES: dict[str, str] = {
    "map": "map.mrc",
    "half1": "half1.mrc",
    "half2": "half2.mrc",
    "fsc_csv": "fsc.csv",
    "fsc_png": "fsc.png",
    "loss_png": "loss.png",
    "run_json": "run.json",
    "log": "reconstruct.log",
    "scored_star": "particles_scored.star",
    "kept_star": "particles_kept.star",
    "robust_png": "robust_weights.png",
}
"""Key -> file name of every output of a run (the keys of :meth:`Result.save`'s answer, and
``log``, written by the command line)."""

LOG_FILE = OUTPUT_FILES["log"]
CHECKPOINT_PATTERN = "checkpoint_*.pt"


def checkpoint_name(tag: str) -> str:
    """File name of the checkpoint of ``tag`` (``"half1"``, ``"half2"``)."""
    return f"checkpoint_{tag}.pt"


@dataclass
class Result:
    """A reconstruction with its validation.

    Attributes
    ----------
    map
        ``(D, D, D)`` final map (full reconstruction, FSC-weighted), float32 tensor on the CPU.
    full_map
        The full reconstruction before FSC weighting.
    half_maps
        ``(half1, half2)``.
    fsc
        :class:`cryograd.validation.FSCResult` of the half maps.
    resolution_angstrom
        Resolution at FSC 0.143 (from the corrected masked FSC when a mask was used).
    pixel_size_angstrom
        Voxel size.
    method
        The method used.
    n_particles
        Particles used (both halves).
    mask
        The mask of the masked FSC, or None.
    history
        Per-method record (CG iterations, losses per epoch, best epochs, ...).
    timings
        Seconds per stage.
    parameters
        The settings recorded in ``run.json``.
    robust
        :class:`~cryograd.reconstruction.robust.RobustOutcome` of a ``--robust`` run (its
        ``particles_scored.star``, ``particles_kept.star`` and ``robust_weights.png`` are written
        with the other outputs), or None.
    """

    map: torch.Tensor
    full_map: torch.Tensor
    half_maps: tuple[torch.Tensor, torch.Tensor]
    fsc: FSCResult
    resolution_angstrom: float
    pixel_size_angstrom: float
    method: str
    n_particles: int
    mask: torch.Tensor | None = None
    history: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    robust: Any = None

    def save(self, outdir: str | Path, *, extra: dict | None = None) -> dict[str, Path]:
        """Write ``map.mrc``, ``half1.mrc``, ``half2.mrc``, ``fsc.csv``, ``fsc.png``, ``loss.png``
        (methods with a loss history) and ``run.json`` into ``outdir``, each atomically
        (:data:`OUTPUT_FILES`)."""
        out = Path(outdir)
        out.mkdir(parents=True, exist_ok=True)
        px = self.pixel_size_angstrom
        names = OUTPUT_FILES
        paths = {
            "map": write_map(out / names["map"], _np(self.map), px),
            "half1": write_map(out / names["half1"], _np(self.half_maps[0]), px),
            "half2": write_map(out / names["half2"], _np(self.half_maps[1]), px),
            "fsc_csv": self.fsc.to_csv(out / names["fsc_csv"]),
            "fsc_png": plot_fsc_result(
                out / names["fsc_png"],
                self.fsc,
                title=f"{self.method}: {self.resolution_angstrom:.2f} Å",
            ),
        }
        h = self.history.get("half1", {})
        if isinstance(h, dict):
            if h.get("train_loss"):
                paths["loss_png"] = plot_loss(
                    out / names["loss_png"],
                    h["train_loss"],
                    h.get("val_loss"),
                    best_epoch=h.get("best_epoch"),
                    first_epoch=0,  # the lists start with the starting map (epoch 0)
                    title=f"{self.method} (half 1)",
                )
        info = {
            "method": self.method,
            "particles": self.n_particles,
            "box_size": int(self.map.shape[-1]),
            "pixel_size_angstrom": px,
            "resolution_143_angstrom": _finite(self.resolution_angstrom),
            "resolution_05_angstrom": _finite(self.fsc.resolution_05_angstrom),
            "fsc": self.fsc.to_dict(),
            "parameters": self.parameters,
            "history": self.history,
            "timings_s": self.timings,
            "versions": _versions(),
        }
        if self.robust is not None:
            paths.update(write_robust_outputs(out, self.robust, names))
            info["robust"] = self.robust.summary()
        if extra:
            info.update(extra)
        paths["run_json"] = write_json_atomic(out / names["run_json"], info)
        return paths


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _versions() -> dict:
    return {
        "cryograd": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def json_safe(obj):
    """``obj`` with tensors/arrays as lists and every non-finite float (NaN, ±inf) as ``None``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def write_json_atomic(path: Path, data: dict) -> Path:
    """Strict JSON (no NaN/Infinity tokens: non-finite numbers are written as ``null``),
    atomically, with the mode of a new file (:func:`cryograd.io.atomic.atomic_path`)."""
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
