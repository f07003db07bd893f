"""cryoSPARC ``.cs`` particle files (numpy structured arrays) to a :class:`ParticleSet`.

Conventions (checked against cryoDRGN's reading of the same file, see the tests):

* ``alignments3D/pose`` is an axis-angle vector in radians; RELION's ``A = R(pose)ᵀ``
  (:func:`cryograd.geometry.cryosparc_pose_to_matrix`).
* ``alignments3D/shift`` is in pixels at ``alignments3D/psize_A`` and keeps its sign as the RELION
  origin; it is rescaled to the image pixel size (``blob/psize_A``) when the two differ.
* CTF: ``ctf/df1_A``, ``df2_A``, ``rad2deg(df_angle_rad)``, ``accel_kv``, ``cs_mm``,
  ``amp_contrast``, ``rad2deg(phase_shift_rad)``, and ``ctf/bfactor`` and ``ctf/scale``
  when present.
* ``alignments3D/split`` (0/1) gives the half sets 1/2, ``alignments3D/class`` (from 0) the
  class numbers (from 1, as ``rlnClassNumber``); ``ctf/exp_group_id`` the optics groups.
* ``location/micrograph_path``, when present, becomes ``rlnMicrographName`` (written by
  ``write_star``).
* Images: ``blob/path`` (a leading ``>`` is dropped) and ``blob/idx`` (0-based); relative paths are
  taken relative to ``datadir`` (``--particles-dir``, the cryoSPARC project folder), trying the file
  name alone there too, or to the ``.cs`` file's folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryograd.errors import CryogradError
from cryograd.geometry import cryosparc_pose_to_matrix
from cryograd.particle_set import (
    OpticsGroup,
    ParticleSet,
    resample_other_boxes,
    resolve_image_path,
)

__all__ = ["read_cs"]

logger = logging.getLogger(__name__)


def _load(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            data = np.load(fh, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise CryogradError(f"{path}: not a cryoSPARC .cs file ({exc})") from None
    if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
        raise CryogradError(f"{path}: not a cryoSPARC .cs file (no structured particle array)")
    if len(data) == 0:
        raise CryogradError(f"{path}: has no particles")
    return data


def _field(path: Path, data: np.ndarray, name: str, shape_tail: tuple = ()) -> np.ndarray:
    values = np.asarray(data[name], dtype=np.float64)
    if values.shape[1:] != shape_tail:
        raise CryogradError(
            f"{path}: field {name} has shape {values.shape[1:]}, expected {shape_tail}"
        )
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise CryogradError(f"{path}: row {row + 1}, field {name}: value is not finite")
    return values


def read_cs(
    path: str | os.PathLike, *, datadir: Path | None = None, angpix: float | None = None
) -> ParticleSet:
    """Read a cryoSPARC ``.cs`` file (see the module docstring for the conventions)."""
    path = Path(path)
    data = _load(path)
    names = set(data.dtype.names or ())
    n = len(data)
    notes: list[str] = []
    pixels = _pixel_sizes(path, data, angpix)
    boxes = _box_sizes(path, data)
    rotations, shifts_px, half_set, class_number = _alignments(path, data, pixels, notes)
    optics_group, groups = _optics_groups(path, data, pixels, boxes)
    box = groups[0].box_size
    resample_other_boxes(groups, optics_group, shifts_px)
    stack_files, stack_ids, stack_indices = _image_locations(path, data, datadir)
    if "blob/sign" in names and np.any(np.asarray(data["blob/sign"]) > 0):
        notes.append(
            "blob/sign is +1 for some particles (cryoSPARC contrast sign); images not flipped"
        )
    return ParticleSet(
        path=path,
        box_size=box,
        pixel_size_angstrom=float(pixels[0]),
        rotations=rotations,
        shifts_px=shifts_px,
        ctf=_ctf_table(path, data, notes),
        ctf_premultiplied=np.zeros(n, dtype=bool),
        optics_group=optics_group.astype(np.int64),
        optics_groups=groups,
        half_set=half_set,
        class_number=class_number,
        stack_files=stack_files,
        stack_ids=stack_ids,
        stack_indices=stack_indices,
        notes=notes,
        source_format="cryoSPARC .cs",
        extra_columns=_micrograph_names(data),
    )


def _pixel_sizes(path: Path, data: np.ndarray, angpix: float | None) -> np.ndarray:
    """``(n,)`` pixel size in Å: ``--angpix``, ``blob/psize_A`` or ``alignments3D/psize_A``."""
    names = data.dtype.names or ()
    if angpix is not None:
        pixels = np.full(len(data), float(angpix))
    elif "blob/psize_A" in names:
        pixels = _field(path, data, "blob/psize_A")
    elif "alignments3D/psize_A" in names:
        pixels = _field(path, data, "alignments3D/psize_A")
    else:
        raise CryogradError(f"{path}: no blob/psize_A; give the pixel size with --angpix")
    if not np.all(pixels > 0):
        row = int(np.argmax(~(pixels > 0)))
        raise CryogradError(
            f"{path}: row {row + 1}: pixel size {pixels[row]} is not positive; "
            "give it with --angpix"
        )
    return pixels


def _box_sizes(path: Path, data: np.ndarray) -> np.ndarray | None:
    """``(n,)`` square box of each particle from ``blob/shape``, or None without it."""
    if "blob/shape" not in (data.dtype.names or ()):
        return None
    shape = np.asarray(data["blob/shape"]).reshape(len(data), -1)
    if shape.shape[1] != 2:
        raise CryogradError(f"{path}: field blob/shape does not hold (ny, nx)")
    if np.any(shape[:, 0] != shape[:, 1]):
        row = int(np.argmax(shape[:, 0] != shape[:, 1]))
        raise CryogradError(
            f"{path}: row {row + 1}, field blob/shape: images are not square {tuple(shape[row])}"
        )
    return shape[:, 0].astype(np.int64)


def _alignments(path: Path, data: np.ndarray, pixels: np.ndarray, notes: list[str]) -> tuple:
    """(rotations ``(n, 3, 3)``, origins ``(n, 2)`` px, half sets, classes) or Nones."""
    names = data.dtype.names or ()
    rotations = shifts_px = half_set = class_number = None
    if "alignments3D/pose" not in names:
        if "alignments2D/pose" in names:
            notes.append("alignments2D only (in-plane poses): no 3D poses")
        return rotations, shifts_px, half_set, class_number
    pose = _field(path, data, "alignments3D/pose", (3,))
    rotations = cryosparc_pose_to_matrix(torch.from_numpy(pose)).numpy()
    if "alignments3D/shift" in names:
        shifts_px = _field(path, data, "alignments3D/shift", (2,))
        if "alignments3D/psize_A" in names:
            align_pixel = _field(path, data, "alignments3D/psize_A")
            if np.any(np.abs(align_pixel - pixels) > 1e-4 * pixels):
                shifts_px = shifts_px * (align_pixel / pixels)[:, None]
                notes.append("shifts rescaled from alignments3D/psize_A to the image pixel size")
    if "alignments3D/split" in names:
        split = np.asarray(data["alignments3D/split"]).astype(np.int64)
        if np.all(np.isin(split, (0, 1))):
            half_set = split + 1
    if "alignments3D/class" in names:
        # cryoSPARC counts classes from 0, RELION's rlnClassNumber from 1
        class_number = np.asarray(data["alignments3D/class"]).astype(np.int64) + 1
    return rotations, shifts_px, half_set, class_number


_CTF_REQUIRED = (
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
)


def _ctf_table(path: Path, data: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """``(n, 9)`` CTF table in ``CTF_COLUMNS`` order, or None when fields are missing."""
    names = data.dtype.names or ()
    n = len(data)
    if not all(r in names for r in _CTF_REQUIRED):
        if any(r in names for r in _CTF_REQUIRED):
            notes.append("CTF fields incomplete: CTF not used")
        return None

    def optional(name: str, default: float, convert=lambda v: v) -> np.ndarray:
        return convert(_field(path, data, name)) if name in names else np.full(n, default)

    du, dv = _field(path, data, "ctf/df1_A"), _field(path, data, "ctf/df2_A")
    angle = np.rad2deg(_field(path, data, "ctf/df_angle_rad"))
    phase = optional("ctf/phase_shift_rad", 0.0, np.rad2deg)
    bfac = optional("ctf/bfactor", 0.0)
    scale = optional("ctf/scale", 1.0)
    q0 = _field(path, data, "ctf/amp_contrast")
    if np.any((q0 < 0) | (q0 >= 1)):
        raise CryogradError(f"{path}: field ctf/amp_contrast must be in [0, 1)")
    kv, cs = _field(path, data, "ctf/accel_kv"), _field(path, data, "ctf/cs_mm")
    return np.stack([du, dv, angle, kv, cs, q0, phase, bfac, scale], axis=1)


def _optics_groups(
    path: Path, data: np.ndarray, pixels: np.ndarray, boxes: np.ndarray | None
) -> tuple[np.ndarray, list[OpticsGroup]]:
    """``(n,)`` group number per particle (from ``ctf/exp_group_id``) and the groups (one pixel
    size and one box each)."""
    if "ctf/exp_group_id" in (data.dtype.names or ()):
        exp = np.asarray(data["ctf/exp_group_id"]).astype(np.int64)
        uniq, inverse = np.unique(exp, return_inverse=True)
        optics_group = inverse.reshape(-1) + 1
        names_of = [f"exp_group_{int(u)}" for u in uniq]
    else:
        optics_group = np.ones(len(data), dtype=np.int64)
        names_of = ["opticsGroup1"]
    groups = []
    for g, name in enumerate(names_of, start=1):
        group_pixels = pixels[optics_group == g]
        if np.any(group_pixels != group_pixels[0]):
            raise CryogradError(
                f"{path}: field blob/psize_A: particles of {name} have different pixel sizes "
                f"({group_pixels.min():g} to {group_pixels.max():g} A)"
            )
        box = None
        if boxes is not None:
            group_boxes = np.unique(boxes[optics_group == g])
            if len(group_boxes) > 1:
                raise CryogradError(
                    f"{path}: field blob/shape: particles of {name} have different box sizes "
                    f"{group_boxes.tolist()}"
                )
            box = int(group_boxes[0])
        groups.append(OpticsGroup(g, name, float(group_pixels[0]), box))
    return optics_group, groups


def _decoded(raw: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Unique byte strings as text (a leading ``>`` dropped) and each row's index into them."""
    codes, inverse = np.unique(raw, return_inverse=True)
    text = [
        (b.decode("utf-8", errors="replace") if isinstance(b, bytes) else str(b))
        .lstrip(">")
        .strip()
        for b in codes
    ]
    return text, inverse.reshape(-1)


def _image_locations(
    path: Path, data: np.ndarray, datadir: Path | None
) -> tuple[list[Path], np.ndarray | None, np.ndarray | None]:
    """(stack files, stack id ``(n,)``, 0-based index ``(n,)``) from ``blob/path``, ``idx``."""
    names = data.dtype.names or ()
    if "blob/path" not in names or "blob/idx" not in names:
        return [], None, None
    decoded, inverse = _decoded(np.asarray(data["blob/path"]))
    if any(not s for s in decoded):
        raise CryogradError(f"{path}: field blob/path holds an empty path")
    stack_files = [resolve_image_path(s, path.parent, datadir) for s in decoded]
    return (
        stack_files,
        inverse.astype(np.int32),
        np.asarray(data["blob/idx"]).astype(np.int64),
    )


def _micrograph_names(data: np.ndarray) -> pd.DataFrame | None:
    """``rlnMicrographName`` from ``location/micrograph_path`` (RELION groups by micrograph)."""
    if "location/micrograph_path" not in (data.dtype.names or ()):
        return None
    mic_names, inverse = _decoded(np.asarray(data["location/micrograph_path"]))
    return pd.DataFrame({"rlnMicrographName": np.array(mic_names, dtype=object)[inverse]})
