"""RELION STAR particle files: read 3.0, 3.1, 4.0 and 5.0; write 3.1.

Parsing is ``starfile``'s; this module holds only RELION's conventions:

* 3.1 and later: a ``data_optics`` table joined to ``data_particles`` on ``rlnOpticsGroup``
  (blocks in either order); voltage, Cs, Q0, pixel size (``rlnImagePixelSize``), box
  (``rlnImageSize``) and the premultiplied flag per optics group; origins in Å
  (``rlnOriginXAngst``) are divided by the group's pixel size. Extra optics fields (beam tilt,
  bracketed Zernike arrays, magnification matrix) are kept in ``OpticsGroup.extra``.
* 3.0: one table (``data_``, ``data_images``, ...), voltage/Cs/Q0 per particle, pixel size
  ``rlnDetectorPixelSize · 1e4 / rlnMagnification`` (or ``--angpix``), origins in pixels
  (``rlnOriginX``). Optics groups are made from the distinct (pixel size, voltage, Cs, Q0) rows.
* ``--angpix`` overrides every pixel size in the file.
* Absent CTF fields default as RELION does: amplitude contrast 0.1, phase shift 0, B-factor 0,
  scale 1.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryograd.errors import CryogradError
from cryograd.geometry import euler_to_matrix, matrix_to_euler
from cryograd.particles import CTF_COLUMNS, OpticsGroup, ParticleSet, parse_image_names

__all__ = ["read_star", "write_star", "read_star_blocks"]

logger = logging.getLogger(__name__)

_PARTICLE_MARKERS = ("rlnImageName", "rlnDefocusU")
# Particle columns cryograd reads into ParticleSet fields, or that describe optics (moved to
# data_optics when writing); every other particle column is kept in ``extra_columns``.
_INTERPRETED = {
    "rlnImageName",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnOriginX",
    "rlnOriginY",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnPhaseShift",
    "rlnCtfBfactor",
    "rlnCtfScalefactor",
    "rlnCtfDataAreCtfPremultiplied",
    "rlnOpticsGroup",
    "rlnOpticsGroupName",
    "rlnRandomSubset",
    "rlnClassNumber",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
    "rlnDetectorPixelSize",
    "rlnMagnification",
}
_POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
DEFAULT_AMPLITUDE_CONTRAST = 0.1


def read_star_blocks(path: Path) -> dict:
    """All blocks of a STAR file (``starfile.read``), parse errors as :class:`CryogradError`."""
    import starfile

    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # noqa: BLE001 - any parser failure is malformed input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        bad = _first_ragged_loop_row(path)
        if bad is not None:
            line, fields, columns = bad
            raise CryogradError(
                f"{path}: malformed STAR file: line {line} has {fields} values but its loop_ "
                f"has {columns} columns"
            ) from None
        raise CryogradError(f"{path}: malformed STAR file ({first})") from None
    if not isinstance(blocks, dict) or not blocks:
        raise CryogradError(f"{path}: no data blocks found (not a STAR file?)")
    return blocks


def _first_ragged_loop_row(path: Path) -> tuple[int, int, int] | None:
    """(line number, values, columns) of the first loop row whose value count is wrong."""
    import shlex

    columns = 0
    in_header = False
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, raw in enumerate(fh, start=1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                if line.startswith("loop_"):
                    columns, in_header = 0, True
                elif line.startswith("data_"):
                    columns, in_header = 0, False
                elif line.startswith("_"):
                    if in_header:
                        columns += 1
                elif columns:
                    in_header = False
                    try:
                        fields = len(shlex.split(line, comments=False))
                    except ValueError:
                        fields = len(line.split())
                    if fields != columns:
                        return number, fields, columns
    except OSError:
        return None
    return None


def _find_particle_block(path: Path, blocks: dict) -> tuple[str, pd.DataFrame]:
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if "particles" in tables and len(tables["particles"].columns):
        return "particles", tables["particles"]
    for marker in _PARTICLE_MARKERS:
        for name, df in tables.items():
            if marker in df.columns:
                return name, df
    for name, df in tables.items():
        if all(c in df.columns for c in _POSE_COLUMNS):
            return name, df
    names = ", ".join(f"data_{k}" for k in blocks) or "none"
    raise CryogradError(
        f"{path}: no particle table (no block with rlnImageName, rlnDefocusU or Euler angles; "
        f"blocks: {names})"
    )


def _numeric(
    path: Path, df: pd.DataFrame, column: str, *, block: str, allow_nan=False
) -> np.ndarray:
    """A column as float64, every value finite, else an error naming row and column."""
    raw = df[column]
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)  # parsed as numbers already
    else:
        try:
            values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            values = np.full(len(raw), np.nan)
    values = np.array(values, dtype=np.float64)  # writable copy
    bad = ~np.isfinite(values)
    if not allow_nan and bad.any():
        row = int(np.argmax(bad))
        value = raw.iloc[row]
        shown = repr(value) if isinstance(value, str) else str(value)
        raise CryogradError(
            f"{path}: data_{block} row {row + 1}, column {column}: "
            f"value {shown} is not a finite number"
        )
    return values


def _optics_table(path: Path, blocks: dict, particles_name: str) -> pd.DataFrame | None:
    optics = blocks.get("optics")
    if optics is None:
        return None
    if not isinstance(optics, pd.DataFrame):
        # a single-row loop may come back as a dict from some starfile versions
        try:
            optics = pd.DataFrame([optics])
        except Exception:  # noqa: BLE001
            raise CryogradError(f"{path}: data_optics is not a table") from None
    if "rlnOpticsGroup" not in optics.columns:
        raise CryogradError(f"{path}: data_optics has no rlnOpticsGroup column")
    if len(optics) == 0:
        raise CryogradError(f"{path}: data_optics is empty")
    return optics


def read_star(
    path: str | os.PathLike,
    *,
    datadir: Path | None = None,
    angpix: float | None = None,
    box_size: int | None = None,
) -> ParticleSet:
    """Read a RELION particle STAR file (3.0 to 5.0) into a :class:`ParticleSet`.

    See the module docstring for the conventions. ``box_size`` is used only when neither the file
    (``rlnImageSize``) nor the first image stack states it.
    """
    path = Path(path)
    blocks = read_star_blocks(path)
    name, df = _find_particle_block(path, blocks)
    df = df.reset_index(drop=True)
    n = len(df)
    if n == 0:
        raise CryogradError(f"{path}: data_{name} has no particles")
    optics = _optics_table(path, blocks, name)
    notes: list[str] = []
    others = [
        k
        for k, v in blocks.items()
        if k != name and isinstance(v, pd.DataFrame) and "rlnImageName" in v.columns
    ]
    if others:
        notes.append(
            f"read data_{name} only; " + ", ".join(f"data_{k}" for k in others) + " also hold"
            " particles"
        )

    def col(column: str, *, table=df, block=name) -> np.ndarray:
        return _numeric(path, table, column, block=block)

    # ---------------------------------------------------------------- optics groups
    if optics is not None:
        group_numbers = col("rlnOpticsGroup", table=optics, block="optics").astype(np.int64)
        if len(np.unique(group_numbers)) != len(group_numbers):
            raise CryogradError(f"{path}: data_optics repeats an rlnOpticsGroup number")
        if "rlnOpticsGroup" in df.columns:
            particle_group = col("rlnOpticsGroup").astype(np.int64)
        elif len(optics) == 1:
            particle_group = np.full(n, group_numbers[0], dtype=np.int64)
        else:
            raise CryogradError(f"{path}: data_{name} has no rlnOpticsGroup column")
        unknown = ~np.isin(particle_group, group_numbers)
        if unknown.any():
            row = int(np.argmax(unknown))
            raise CryogradError(
                f"{path}: data_{name} row {row + 1}, column rlnOpticsGroup: group "
                f"{particle_group[row]} is not in data_optics"
            )
        per_row_index = np.searchsorted(np.sort(group_numbers), particle_group)
        sorted_rows = np.argsort(group_numbers)
        particle_optics_row = sorted_rows[per_row_index]  # (n,) row of optics per particle

        if angpix is not None:
            group_pixel = np.full(len(optics), float(angpix))
        elif "rlnImagePixelSize" in optics.columns:
            group_pixel = col("rlnImagePixelSize", table=optics, block="optics")
        else:
            raise CryogradError(
                f"{path}: data_optics has no rlnImagePixelSize; give the pixel size with --angpix"
            )
        if np.any(group_pixel <= 0):
            raise CryogradError(f"{path}: data_optics column rlnImagePixelSize: pixel size <= 0")
        if "rlnImageSize" in optics.columns:
            group_box = col("rlnImageSize", table=optics, block="optics").astype(np.int64)
        else:
            group_box = None
        group_names = (
            optics["rlnOpticsGroupName"].astype(str).tolist()
            if "rlnOpticsGroupName" in optics.columns
            else [f"opticsGroup{g}" for g in group_numbers]
        )
        known = {"rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize", "rlnImageSize"}
        groups = []
        for i, g in enumerate(group_numbers):
            extra = {c: _plain(optics[c].iloc[i]) for c in optics.columns if c not in known}
            groups.append(
                OpticsGroup(
                    int(g),
                    group_names[i],
                    float(group_pixel[i]),
                    None if group_box is None else int(group_box[i]),
                    extra,
                )
            )
        particle_pixel = group_pixel[particle_optics_row]

        def per_particle(column: str) -> np.ndarray | None:
            """A value from the particle table when there, else the optics group's."""
            if column in df.columns:
                return col(column)
            if column in optics.columns:
                return col(column, table=optics, block="optics")[particle_optics_row]
            return None

        if "rlnImagePixelSize" not in optics.columns and angpix is not None:
            notes.append(f"pixel size {angpix} A from --angpix")
    else:
        # ------------------------------------------------------------ RELION 3.0
        per_particle = lambda column: col(column) if column in df.columns else None  # noqa: E731
        if angpix is not None:
            particle_pixel = np.full(n, float(angpix))
        elif "rlnImagePixelSize" in df.columns:
            particle_pixel = col("rlnImagePixelSize")
        elif "rlnDetectorPixelSize" in df.columns and "rlnMagnification" in df.columns:
            det = col("rlnDetectorPixelSize")
            mag = col("rlnMagnification")
            if np.any(mag <= 0) or np.any(det <= 0):
                row = int(np.argmax((mag <= 0) | (det <= 0)))
                raise CryogradError(
                    f"{path}: data_{name} row {row + 1}: rlnMagnification and "
                    "rlnDetectorPixelSize must be positive"
                )
            particle_pixel = det * 1e4 / mag
        else:
            raise CryogradError(
                f"{path}: pixel size unknown (no data_optics, no rlnDetectorPixelSize/"
                "rlnMagnification); give it with --angpix"
            )
        if np.any(particle_pixel <= 0):
            raise CryogradError(f"{path}: pixel size must be positive")
        particle_pixel = np.round(particle_pixel, 6)
        key_columns = [particle_pixel]
        for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
            if c in df.columns:
                key_columns.append(col(c))
        keys = np.stack(key_columns, axis=1)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first)  # number groups in order of first appearance
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        particle_group = rank[inverse.reshape(-1)] + 1
        box_col = col("rlnImageSize").astype(np.int64) if "rlnImageSize" in df.columns else None
        groups = []
        for g in range(len(order)):
            member = int(first[order[g]])
            groups.append(
                OpticsGroup(
                    g + 1,
                    f"opticsGroup{g + 1}",
                    float(particle_pixel[member]),
                    None if box_col is None else int(box_col[member]),
                )
            )

    # ---------------------------------------------------------------- image locations
    stack_files: list[Path] = []
    stack_ids = stack_indices = None
    if "rlnImageName" in df.columns:
        stack_files, stack_ids, stack_indices = parse_image_names(
            df["rlnImageName"], path.parent, datadir, path
        )

    # ---------------------------------------------------------------- box size
    boxes = {g.box_size for g in groups if g.box_size is not None}
    if len(boxes) > 1:
        raise CryogradError(
            f"{path}: optics groups have different box sizes {sorted(boxes)} (rlnImageSize); "
            "cryograd needs one box size per particle set"
        )
    if boxes:
        box = boxes.pop()
    else:
        box = _box_from_first_stack(stack_files) if stack_files else None
        if box is None:
            box = box_size
        for g in groups:
            g.box_size = box
    if box is not None and box <= 0:
        raise CryogradError(f"{path}: box size must be positive, got {box}")

    # ---------------------------------------------------------------- poses and origins
    rotations = None
    if all(c in df.columns for c in ("rlnAngleRot", "rlnAngleTilt")):
        rot, tilt = col("rlnAngleRot"), col("rlnAngleTilt")
        psi = col("rlnAnglePsi") if "rlnAnglePsi" in df.columns else np.zeros(n)
        rotations = euler_to_matrix(
            torch.from_numpy(rot), torch.from_numpy(tilt), torch.from_numpy(psi)
        ).numpy()
    elif "rlnAnglePsi" in df.columns:
        notes.append("only rlnAnglePsi present (2D alignment): no 3D poses")

    shifts_px = None
    if "rlnOriginXAngst" in df.columns or "rlnOriginYAngst" in df.columns:
        sx = col("rlnOriginXAngst") if "rlnOriginXAngst" in df.columns else np.zeros(n)
        sy = col("rlnOriginYAngst") if "rlnOriginYAngst" in df.columns else np.zeros(n)
        shifts_px = np.stack([sx, sy], axis=1) / particle_pixel[:, None]
    elif "rlnOriginX" in df.columns or "rlnOriginY" in df.columns:
        sx = col("rlnOriginX") if "rlnOriginX" in df.columns else np.zeros(n)
        sy = col("rlnOriginY") if "rlnOriginY" in df.columns else np.zeros(n)
        shifts_px = np.stack([sx, sy], axis=1)

    # ---------------------------------------------------------------- CTF
    ctf = None
    if "rlnDefocusU" in df.columns:
        voltage = per_particle("rlnVoltage")
        cs = per_particle("rlnSphericalAberration")
        if voltage is None or cs is None:
            missing = "rlnVoltage" if voltage is None else "rlnSphericalAberration"
            notes.append(f"CTF incomplete (no {missing}): CTF not used")
            logger.warning("%s: no %s, CTF parameters ignored", path, missing)
        else:
            du = col("rlnDefocusU")
            dv = col("rlnDefocusV") if "rlnDefocusV" in df.columns else du
            q0 = per_particle("rlnAmplitudeContrast")
            if q0 is None:
                q0 = np.full(n, DEFAULT_AMPLITUDE_CONTRAST)
                notes.append(f"no rlnAmplitudeContrast: using {DEFAULT_AMPLITUDE_CONTRAST}")
            if np.any((q0 < 0) | (q0 >= 1)):
                raise CryogradError(f"{path}: rlnAmplitudeContrast must be in [0, 1)")
            if np.any(voltage <= 0):
                raise CryogradError(f"{path}: rlnVoltage must be positive")

            def opt(column, default):
                v = per_particle(column)
                return np.full(n, default, dtype=np.float64) if v is None else v

            ctf = np.stack(
                [
                    du,
                    dv,
                    opt("rlnDefocusAngle", 0.0),
                    voltage,
                    cs,
                    q0,
                    opt("rlnPhaseShift", 0.0),
                    opt("rlnCtfBfactor", 0.0),
                    opt("rlnCtfScalefactor", 1.0),
                ],
                axis=1,
            ).astype(np.float64)
            assert ctf.shape[1] == len(CTF_COLUMNS)
    premult_values = per_particle("rlnCtfDataAreCtfPremultiplied")
    premultiplied = (
        np.zeros(n, dtype=bool) if premult_values is None else premult_values.astype(bool)
    )

    # ---------------------------------------------------------------- half sets, classes
    half_set = None
    if "rlnRandomSubset" in df.columns:
        half_set = col("rlnRandomSubset").astype(np.int64)
        bad = ~np.isin(half_set, (1, 2))
        if bad.any():
            row = int(np.argmax(bad))
            raise CryogradError(
                f"{path}: data_{name} row {row + 1}, column rlnRandomSubset: value "
                f"{half_set[row]} is not 1 or 2"
            )
    class_number = (
        col("rlnClassNumber").astype(np.int64) if "rlnClassNumber" in df.columns else None
    )

    extra_names = [c for c in df.columns if c not in _INTERPRETED]
    extra_columns = df[extra_names].reset_index(drop=True) if extra_names else None

    first_group = groups[0]
    return ParticleSet(
        path=path,
        box_size=box,
        pixel_size_angstrom=first_group.pixel_size_angstrom,
        rotations=rotations,
        shifts_px=shifts_px,
        ctf=ctf,
        ctf_premultiplied=premultiplied,
        optics_group=np.asarray(particle_group, dtype=np.int64),
        optics_groups=groups,
        half_set=half_set,
        class_number=class_number,
        stack_files=stack_files,
        stack_ids=stack_ids,
        stack_indices=stack_indices,
        notes=notes,
        source_format="RELION 3.1+ STAR" if optics is not None else "RELION 3.0 STAR",
        extra_columns=extra_columns,
    )


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def _box_from_first_stack(stack_files: list[Path]) -> int | None:
    from cryograd.io.mrc import read_map_header

    for f in stack_files[:1]:
        if Path(f).is_file():
            header = read_map_header(f)
            ny, nx = header.shape[-2:]
            if nx != ny:
                raise CryogradError(f"{f}: images are not square ({nx} x {ny})")
            return int(nx)
    return None


# ====================================================================== writing
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
    """
    path = Path(path)
    n = len(particles)
    if particles.box_size is None:
        raise CryogradError(
            f"{particles.path}: box size unknown (no rlnImageSize, no images); give it with --box"
        )
    pixel = particles.pixel_sizes_angstrom
    ctf = particles.ctf
    # ------------------------------------------------------------ optics groups to write
    key_parts = [
        particles.optics_group.astype(np.float64),
        pixel,
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
    # keep the set's group numbers when no group had to be split
    keep_numbers = len(order) == len(np.unique(particles.optics_group))
    if keep_numbers:
        new_group = particles.optics_group.astype(np.int64)
    names_by_number = {g.number: g.name for g in particles.optics_groups}
    extra_by_number = {g.number: g.extra for g in particles.optics_groups}
    # other optics fields (beam tilt, aberrations, magnification matrix, ...) that every source
    # group has, copied through
    common_extra = None
    for g in particles.optics_groups:
        keys = {
            k
            for k, v in g.extra.items()
            if k not in _OPTICS_WRITTEN
            and not (isinstance(v, str) and (not v or any(ch.isspace() for ch in v)))
        }
        common_extra = keys if common_extra is None else common_extra & keys
    common_extra = sorted(common_extra or ())
    optics_rows = []
    used_names: set[str] = set()
    for g in sorted(range(len(order)), key=lambda k: int(new_group[first[order[k]]])):
        m = int(first[order[g]])
        number = int(new_group[m])
        name = names_by_number.get(int(particles.optics_group[m]), f"opticsGroup{number}")
        if name in used_names or not name or any(ch.isspace() for ch in name):
            name = f"opticsGroup{number}"
        used_names.add(name)
        row = {"rlnOpticsGroup": number, "rlnOpticsGroupName": name}
        source_extra = extra_by_number.get(int(particles.optics_group[m]), {})
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
            rlnImageSize=int(particles.box_size),
            rlnImageDimensionality=2,
            rlnCtfDataAreCtfPremultiplied=int(particles.ctf_premultiplied[m]),
        )
        row.update({k: source_extra[k] for k in common_extra})
        optics_rows.append(row)
    optics_df = pd.DataFrame(optics_rows)

    # ------------------------------------------------------------ particles
    cols: dict[str, np.ndarray] = {}
    if image_names is None and particles.has_images and particles.image_array is None:
        if np.any(particles.stack_ids < 0):
            raise CryogradError(f"{particles.path}: some particles have no image name")
        image_names = _relative_names(particles, path.parent)
    if image_names is not None:
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
        cols["rlnImageName"] = image_names
    if particles.rotations is not None:
        angles = matrix_to_euler(torch.from_numpy(np.asarray(particles.rotations, np.float64)))
        angles = angles.numpy()
        cols["rlnAngleRot"], cols["rlnAngleTilt"], cols["rlnAnglePsi"] = angles.T
    if particles.shifts_px is not None:
        shifts_a = particles.shifts_angstrom
        cols["rlnOriginXAngst"], cols["rlnOriginYAngst"] = shifts_a.T
    if ctf is not None:
        cols["rlnDefocusU"] = ctf[:, 0]
        cols["rlnDefocusV"] = ctf[:, 1]
        cols["rlnDefocusAngle"] = ctf[:, 2]
        cols["rlnPhaseShift"] = ctf[:, 6]
        cols["rlnCtfBfactor"] = ctf[:, 7]
        cols["rlnCtfScalefactor"] = ctf[:, 8]
    cols["rlnOpticsGroup"] = new_group.astype(np.int64)
    if particles.class_number is not None:
        cols["rlnClassNumber"] = particles.class_number.astype(np.int64)
    if particles.half_set is not None:
        cols["rlnRandomSubset"] = particles.half_set.astype(np.int64)
    cols.update(_passed_on_columns(particles, set(cols)))
    particles_df = pd.DataFrame(cols)
    for name, values in cols.items():
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise CryogradError(f"{path}: column {name} would hold NaN or infinite values")

    from cryograd.io.mrc import temporary_path

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
    return path


def _passed_on_columns(particles: ParticleSet, written: set[str]) -> dict[str, np.ndarray]:
    """The set's uninterpreted STAR columns that can be written as they are."""
    extra = particles.extra_columns
    if extra is None or len(extra) != len(particles):
        return {}
    out = {}
    for name in extra.columns:
        if name in written or name in _INTERPRETED or not str(name).startswith("rln"):
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
