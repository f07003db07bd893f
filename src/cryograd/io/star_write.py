"""Writing RELION 3.1 STAR files (``data_optics`` + ``data_particles``), atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryograd.errors import CryogradError
from cryograd.geometry import matrix_to_euler
from cryograd.io.mrc import temporary_path
from cryograd.io.star_columns import INTERPRETED_COLUMNS
from cryograd.particle_set import ParticleSet

__all__ = ["write_star"]

logger = logging.getLogger(__name__)


def _decimal_strings(values: np.ndarray) -> np.ndarray:
    """float64 values as decimal strings of at most 12 significant digits, vectorised.

    Each value is first rounded to 12 significant digits as ``integer / 10**k`` (both exact in
    float64, so the quotient is the double nearest that decimal), then numpy's shortest
    round-trip repr prints it: RELION's own ``%12.6f`` values come back unchanged and computed
    ones lose only digits beyond the 12th.
    """
    x = np.asarray(values, dtype=np.float64).copy()
    ax = np.abs(x)
    ok = np.isfinite(x) & (ax >= 1e-10) & (ax < 1e11)
    k = 11.0 - np.floor(np.log10(ax[ok]))  # decimals kept, 1..21 (10**k exact)
    scale = 10.0**k
    x[ok] = np.round(x[ok] * scale) / scale
    return x.astype(str)


def _column_strings(values: np.ndarray) -> np.ndarray:
    """One column as an array of decimal strings (see :func:`_table_chunks` for floats)."""
    if values.dtype.kind == "f":
        as32 = values.astype(np.float32)
        if np.array_equal(as32.astype(np.float64), values):
            return as32.astype(str)
        return _decimal_strings(values)
    if values.dtype.kind in "iub":
        return values.astype(np.int64).astype(str)
    return np.asarray([str(v) for v in values], dtype=object)


def _table_chunks(df: pd.DataFrame, rows_per_chunk: int = 50_000):
    """A STAR ``loop_`` of ``df`` as text pieces (header, then blocks of rows).

    Floats are written with 12 significant digits (RELION's own ``%12.6f`` values survive
    exactly), except columns whose every value is exactly a float32 (values from float32 files:
    cryoSPARC ``.cs``, cryoDRGN pkl), which get the shortest decimal of that float32 (``1.035``,
    not ``1.03499996662``): they read back as the same float32. Rows are formatted a block at a
    time, so a million particles never sit in memory as Python strings all at once.
    """
    header = ["loop_"] + [f"_{c} #{i + 1}" for i, c in enumerate(df.columns)]
    yield "\n".join(header) + "\n"
    columns = [df[c].to_numpy() for c in df.columns]
    for start in range(0, len(df), rows_per_chunk):
        block = [_column_strings(v[start : start + rows_per_chunk]).tolist() for v in columns]
        yield "\n".join(map(" ".join, zip(*block))) + "\n"


# Optics fields written from the CTF table or computed; source optics fields with these names are
# not copied through.
_OPTICS_WRITTEN = {
    "rlnOpticsGroup",
    "rlnOpticsGroupName",
    "rlnAmplitudeContrast",
    "rlnSphericalAberration",
    "rlnVoltage",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnCtfDataAreCtfPremultiplied",
}
# RELION's ObservationModel refuses an optics table without voltage and Cs, even for data with no
# CTF; these stand in when the set has no CTF and the source optics table gave none.
_NO_CTF_OPTICS = {"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}


def write_star(
    path: str | os.PathLike,
    particles: ParticleSet,
    *,
    image_names: list[str] | np.ndarray | None = None,
) -> Path:
    """Write ``particles`` as a RELION 3.1 STAR file (optics and particles blocks), atomically.

    Parameters
    ----------
    path
        Destination ``.star``.
    particles
        The set. Poses become ``rlnAngleRot/Tilt/Psi`` (RELION's ``Euler_matrix2angles``), origins
        ``rlnOriginXAngst/YAngst`` in Å, CTF the usual columns; voltage, Cs, Q0, pixel size, box
        and the premultiplied flag go to ``data_optics`` (a group is split where they differ
        within it). Other optics fields read from a RELION 3.1+ file (beam tilt, aberrations,
        magnification matrix) are copied through. A set without CTF still gets voltage, Cs and
        Q0 in ``data_optics`` (RELION requires them): the source's, else 300 kV, 2.7 mm, 0.1.
        Particle columns read from a STAR file but not interpreted (``extra_columns``:
        micrograph names, coordinates, groups, ...) are written after cryograd's own.
    image_names
        ``NNNNNN@path`` per particle; default: the set's own image locations (stacks inside the
        destination folder relative to it, others absolute), or none.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if particles.box_size is None:
        raise CryogradError(
            f"{particles.path}: box size unknown (no rlnImageSize, no images); give it with --box"
        )
    new_group, first_members = _split_optics_groups(particles)
    optics_df = _optics_frame(particles, new_group, first_members)
    cols = _particle_columns(path, particles, new_group, image_names)
    _write_tables(path, optics_df, pd.DataFrame(cols))
    return path


def _split_optics_groups(particles: ParticleSet) -> tuple[np.ndarray, list[int]]:
    """Optics group number to write per particle ``(n,)``, and the first member of each group.

    A source group is split where voltage, Cs, Q0, pixel size or the premultiplied flag differ
    within it; the source numbers are kept when no group had to be split. Groups come in order
    of their number.
    """
    ctf = particles.ctf
    key_parts = [
        particles.optics_group.astype(np.float64),
        particles.file_pixel_sizes_angstrom,
        particles.ctf_premultiplied.astype(np.float64),
    ]
    if ctf is not None:
        key_parts += [ctf[:, 3], ctf[:, 4], ctf[:, 5]]
    keys = np.stack(key_parts, axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    new_group = rank[inverse.reshape(-1)] + 1
    if len(order) == len(np.unique(particles.optics_group)):
        new_group = particles.optics_group.astype(np.int64)  # no group was split
    members = sorted((int(m) for m in first[order]), key=lambda m: int(new_group[m]))
    return new_group, members


def _common_extra_fields(particles: ParticleSet) -> list[str]:
    """Other optics fields (beam tilt, aberrations, ...) that every source group has."""
    common = None
    for g in particles.optics_groups:
        keys = {
            k
            for k, v in g.extra.items()
            if k not in _OPTICS_WRITTEN
            and not (isinstance(v, str) and (not v or any(ch.isspace() for ch in v)))
        }
        common = keys if common is None else common & keys
    return sorted(common or ())


def _optics_frame(
    particles: ParticleSet, new_group: np.ndarray, first_members: list[int]
) -> pd.DataFrame:
    """The ``data_optics`` table: one row per written group, from its first member."""
    ctf, pixel = particles.ctf, particles.file_pixel_sizes_angstrom
    boxes = particles.file_box_sizes
    names_by_number = {g.number: g.name for g in particles.optics_groups}
    extra_by_number = {g.number: g.extra for g in particles.optics_groups}
    common_extra = _common_extra_fields(particles)
    rows = []
    used_names: set[str] = set()
    for m in first_members:
        number, source = int(new_group[m]), int(particles.optics_group[m])
        name = names_by_number.get(source, f"opticsGroup{number}")
        if name in used_names or not name or any(ch.isspace() for ch in name):
            name = f"opticsGroup{number}"
        used_names.add(name)
        row = {"rlnOpticsGroup": number, "rlnOpticsGroupName": name}
        source_extra = extra_by_number.get(source, {})
        if ctf is not None:
            row.update(
                rlnAmplitudeContrast=ctf[m, 5],
                rlnSphericalAberration=ctf[m, 4],
                rlnVoltage=ctf[m, 3],
            )
        else:
            for key, default in _NO_CTF_OPTICS.items():
                value = pd.to_numeric(pd.Series([source_extra.get(key)]), errors="coerce")[0]
                row[key] = float(value) if np.isfinite(value) else default
        row.update(
            rlnImagePixelSize=pixel[m],
            rlnImageSize=int(boxes[m]),
            rlnImageDimensionality=2,
            rlnCtfDataAreCtfPremultiplied=int(particles.ctf_premultiplied[m]),
        )
        row.update({k: source_extra[k] for k in common_extra})
        rows.append(row)
    return pd.DataFrame(rows)


def _image_name_column(
    path: Path, particles: ParticleSet, image_names: list[str] | np.ndarray | None
) -> np.ndarray | None:
    """``rlnImageName`` values (checked: non-empty, no spaces), or None when there are none."""
    n = len(particles)
    if image_names is None and particles.has_images and particles.image_array is None:
        if np.any(particles.stack_ids < 0):
            raise CryogradError(f"{particles.path}: some particles have no image name")
        image_names = _relative_names(particles, path.parent)
    if image_names is None:
        return None
    image_names = np.asarray(image_names, dtype=object)
    if len(image_names) != n:
        raise ValueError(f"image_names has {len(image_names)} entries, expected {n}")
    names = pd.Series(image_names, dtype=object)
    is_str = names.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
    text = names.where(is_str, "").astype(str)
    bad = ~is_str | (text.str.len() == 0).to_numpy() | text.str.contains(r"\s").to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise CryogradError(
            f"{path}: image name {image_names[row]!r} of particle {row + 1} is empty or "
            "contains spaces"
        )
    return image_names


def _particle_columns(
    path: Path,
    particles: ParticleSet,
    new_group: np.ndarray,
    image_names: list[str] | np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The ``data_particles`` columns, in the order written."""
    ctf = particles.ctf
    cols: dict[str, np.ndarray] = {}
    names = _image_name_column(path, particles, image_names)
    if names is not None:
        cols["rlnImageName"] = names
    if particles.rotations is not None:
        angles = matrix_to_euler(torch.from_numpy(np.asarray(particles.rotations, np.float64)))
        cols["rlnAngleRot"], cols["rlnAngleTilt"], cols["rlnAnglePsi"] = angles.numpy().T
    shifts_angstrom = particles.shifts_angstrom
    if shifts_angstrom is not None:
        cols["rlnOriginXAngst"], cols["rlnOriginYAngst"] = shifts_angstrom.T
    if ctf is not None:
        for name, k in (
            ("rlnDefocusU", 0),
            ("rlnDefocusV", 1),
            ("rlnDefocusAngle", 2),
            ("rlnPhaseShift", 6),
            ("rlnCtfBfactor", 7),
            ("rlnCtfScalefactor", 8),
        ):
            cols[name] = ctf[:, k]
    cols["rlnOpticsGroup"] = new_group.astype(np.int64)
    if particles.class_number is not None:
        cols["rlnClassNumber"] = particles.class_number.astype(np.int64)
    if particles.half_set is not None:
        cols["rlnRandomSubset"] = particles.half_set.astype(np.int64)
    cols.update(_passed_on_columns(particles, set(cols)))
    for name, values in cols.items():
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise CryogradError(f"{path}: column {name} would hold NaN or infinite values")
    return cols


def _write_tables(path: Path, optics_df: pd.DataFrame, particles_df: pd.DataFrame) -> None:
    """Both tables to ``path`` through a temporary file renamed into place."""
    tmp = temporary_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\n# version 30001\n\ndata_optics\n\n")
            fh.writelines(_table_chunks(optics_df))
            fh.write("\n\n# version 30001\n\ndata_particles\n\n")
            fh.writelines(_table_chunks(particles_df))
            fh.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CryogradError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _passed_on_columns(particles: ParticleSet, written: set[str]) -> dict[str, np.ndarray]:
    """The set's uninterpreted STAR columns that can be written as they are."""
    extra = particles.extra_columns
    if extra is None or len(extra) != len(particles):
        return {}
    out = {}
    for name in extra.columns:
        if name in written or name in INTERPRETED_COLUMNS or not str(name).startswith("rln"):
            continue
        column = extra[name]
        if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(
            column.dtype
        ):
            values = column.to_numpy()
            if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
                logger.warning("column %s holds NaN or infinite values: not written", name)
                continue
        else:
            text = column.astype(str)
            if bool((text.str.len() == 0).any()) or bool(text.str.contains(r"\s").any()):
                logger.warning("column %s holds empty values or spaces: not written", name)
                continue
            values = text.to_numpy(dtype=object)
        out[name] = values
    return out


def _relative_names(particles: ParticleSet, folder: Path) -> np.ndarray:
    """``NNNNNN@path`` for every particle.

    A stack inside ``folder`` (the STAR file's) is written relative to it; any other stack by its
    absolute path, which both cryograd and RELION (whose paths are relative to the project folder
    it runs in) find wherever the STAR file is used from.
    """
    folder_abs = os.path.abspath(folder)
    rel = []
    for f in particles.stack_files:
        f_abs = os.path.abspath(f)
        try:
            inside = os.path.commonpath([f_abs, folder_abs]) == folder_abs
        except ValueError:  # another drive on Windows
            inside = False
        rel.append(os.path.relpath(f_abs, folder_abs) if inside else f_abs)
    rel_arr = np.asarray(rel + [""], dtype=object)
    numbers = pd.Series(particles.stack_indices + 1).map("{:06d}".format).to_numpy(dtype=object)
    files = rel_arr[particles.stack_ids]
    return numbers + "@" + files
