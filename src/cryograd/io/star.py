"""RELION STAR particle files: read 3.0, 3.1, 4.0 and 5.0; write 3.1.

Parsing is :mod:`cryograd.io.star_parser`'s (``starfile``'s grammar, faster); optics per RELION
version are :mod:`cryograd.io.star_optics`'s; writing is :mod:`cryograd.io.star_write`'s. The
conventions:

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

import ctypes
import importlib
import logging
import os
import threading
from functools import cache
from pathlib import Path

import numpy as np

from cryograd._native import native_function
from cryograd.errors import CryogradError
from cryograd.io.mrc import read_map_header
from cryograd.io.star_columns import DEFAULT_AMPLITUDE_CONTRAST, INTERPRETED_COLUMNS
from cryograd.io.star_optics import (
    StarOptics,
    is_particle_table,
    optics_from_table,
    optics_relion30,
)
from cryograd.io.star_parser import reader_threads
from cryograd.io.star_table import StarTable, find_particle_block, optics_table, read_star_blocks
from cryograd.io.star_write import write_star
from cryograd.particle_set import (
    OpticsGroup,
    ParticleSet,
    parse_image_names,
    resample_other_boxes,
)

__all__ = ["read_star", "write_star", "read_star_blocks"]

logger = logging.getLogger(__name__)

_ROTATION_CHUNK = 1 << 14


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
    with _SMALL_PAGES:
        return _read_star(Path(path), datadir, angpix, box_size)


class _SmallPages:
    """A context in which NumPy gives no huge-page advice (restored when the last one exits).

    NumPy advises transparent huge pages (``madvise``) for every array of 4 MB or more. Where the
    kernel compacts memory to fault such a page (THP ``defrag`` ``madvise``, a common default), a
    read that fills fresh arrays spends more system time faulting them than 4 kB pages cost: on the
    1M-row benchmark file 0.8-1.1 s of system time with the advice, 0.4-0.5 s without. Reentrant
    and thread-safe (a count of the contexts open); a no-op where NumPy has no such switch.
    """

    def __init__(self) -> None:
        self._lock, self._open, self._saved = threading.Lock(), 0, True

    def __enter__(self) -> None:
        with self._lock:
            switch = _hugepage_switch()
            if self._open == 0 and switch is not None:
                self._saved = bool(switch(False))
            self._open += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._open -= 1
            switch = _hugepage_switch()
            if self._open == 0 and switch is not None:
                switch(self._saved)


@cache
def _hugepage_switch():
    """NumPy's ``_set_madvise_hugepage`` (sets the advice, returns the previous), or None."""
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        switch = getattr(module, "_set_madvise_hugepage", None)
        if switch is not None:
            return switch
    return None


_SMALL_PAGES = _SmallPages()


def _read_star(
    path: Path, datadir: Path | None, angpix: float | None, box_size: int | None
) -> ParticleSet:
    """:func:`read_star` (with NumPy's huge-page advice off)."""
    blocks = read_star_blocks(path)
    name, df = find_particle_block(path, blocks)
    table = StarTable(path, df.reset_index(drop=True), name)
    n = len(table)
    if n == 0:
        raise CryogradError(f"{path}: data_{name} has no particles")
    notes: list[str] = []
    others = [k for k, v in blocks.items() if k != name and is_particle_table(v)]
    if others:
        notes.append(
            f"read data_{name} only; " + ", ".join(f"data_{k}" for k in others) + " also hold"
            " particles"
        )
    optics_df = optics_table(path, blocks)
    if optics_df is not None:
        optics = optics_from_table(table, StarTable(path, optics_df, "optics"), angpix, notes)
    else:
        optics = optics_relion30(table, angpix)
    stack_files: list[Path] = []
    stack_ids = stack_indices = None
    if table.has("rlnImageName"):
        stack_files, stack_ids, stack_indices = parse_image_names(
            table.df["rlnImageName"], path.parent, datadir, path
        )
    box = _box_size(path, optics.groups, stack_files, box_size)
    shifts_px = _origins_px(table, optics.particle_pixel)
    resample_other_boxes(optics.groups, np.asarray(optics.particle_group), shifts_px)
    half_set, class_number = _half_sets_and_classes(table)
    extra_names = [c for c in table.df.columns if c not in INTERPRETED_COLUMNS]
    premultiplied = optics.per_particle("rlnCtfDataAreCtfPremultiplied")
    particles = ParticleSet(
        path=path,
        box_size=box,
        pixel_size_angstrom=optics.groups[0].pixel_size_angstrom,
        rotations=_rotations(table, notes),
        shifts_px=shifts_px,
        ctf=_ctf_table(optics, notes),
        ctf_premultiplied=np.zeros(n, dtype=bool)
        if premultiplied is None
        else premultiplied.astype(bool),
        optics_group=np.asarray(optics.particle_group, dtype=np.int64),
        optics_groups=optics.groups,
        half_set=half_set,
        class_number=class_number,
        stack_files=stack_files,
        stack_ids=stack_ids,
        stack_indices=stack_indices,
        notes=notes,
        source_format="RELION 3.1+ STAR" if optics_df is not None else "RELION 3.0 STAR",
        extra_columns=table.df[extra_names].reset_index(drop=True) if extra_names else None,
    )
    particles.group_aberrations()  # refuse malformed aberration columns when the file is read
    return particles


def _box_size(
    path: Path, groups: list[OpticsGroup], stack_files: list[Path], box_size: int | None
) -> int | None:
    """The box size of the set: the optics groups' (the first group's when they differ, as
    RELION: the others are resampled onto it, :mod:`cryograd.optics.rescale`), else the first
    stack's, else given."""
    boxes = {g.box_size for g in groups if g.box_size is not None}
    if any(b <= 0 for b in boxes):
        raise CryogradError(f"{path}: box size must be positive, got {min(boxes)}")
    box: int | None
    if len(boxes) > 1:  # the others are resampled onto it (resample_other_boxes)
        box = next(g.box_size for g in groups if g.box_size is not None)
    elif boxes:
        box = boxes.pop()
    else:
        box = _box_from_first_stack(stack_files) if stack_files else None
        if box is None:
            box = box_size
        for g in groups:
            g.box_size = box
    if box is not None and box <= 0:
        raise CryogradError(f"{path}: box size must be positive, got {box}")
    return box


def _box_from_first_stack(stack_files: list[Path]) -> int | None:
    for f in stack_files[:1]:
        if Path(f).is_file():
            header = read_map_header(f)
            ny, nx = header.shape[-2:]
            if nx != ny:
                raise CryogradError(f"{f}: images are not square ({nx} x {ny})")
            return int(nx)
    return None


def _rotations(table: StarTable, notes: list[str]) -> np.ndarray | None:
    """``(n, 3, 3)`` RELION ``A`` from ``rlnAngleRot/Tilt/Psi`` (ZYZ, degrees), or None.

    The formulas of :func:`cryograd.geometry.euler_to_matrix`: compiled (``_euler.c``, on the
    reader's threads) where the extension is built, else in NumPy.
    """
    if not (table.has("rlnAngleRot") and table.has("rlnAngleTilt")):
        if table.has("rlnAnglePsi"):
            notes.append("only rlnAnglePsi present (2D alignment): no 3D poses")
        return None
    rot = table.col("rlnAngleRot", writable=False)
    tilt = table.col("rlnAngleTilt", writable=False)
    psi = table.col("rlnAnglePsi", writable=False) if table.has("rlnAnglePsi") else None
    out = np.empty((len(table), 3, 3))
    fn = _rotations_function()
    if fn is None:
        return _rotations_numpy(rot, tilt, np.zeros(len(table)) if psi is None else psi, out)
    fn(rot.ctypes.data, tilt.ctypes.data, None if psi is None else psi.ctypes.data, len(table),
       out.ctypes.data, reader_threads())  # fmt: skip
    return out


@cache
def _rotations_function():
    """``cryograd_euler_rotations`` of the compiled extension (ctypes), or None."""
    args = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    return native_function("cryograd_euler_rotations", args)


def _rotations_numpy(
    rot: np.ndarray, tilt: np.ndarray, psi: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """:func:`_rotations` in NumPy into ``out``, a chunk of particles at a time (few
    temporaries, each in cache)."""
    for lo in range(0, len(out), _ROTATION_CHUNK):
        part = slice(lo, lo + _ROTATION_CHUNK)
        a, b, g = np.deg2rad(rot[part]), np.deg2rad(tilt[part]), np.deg2rad(psi[part])
        ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
        cgcb, sgcb, m = cg * cb, sg * cb, out[part]
        m[:, 0, 0] = cgcb * ca - sg * sa
        m[:, 0, 1] = cgcb * sa + sg * ca
        m[:, 0, 2] = -cg * sb
        m[:, 1, 0] = -(sgcb * ca) - cg * sa
        m[:, 1, 1] = -(sgcb * sa) + cg * ca
        m[:, 1, 2] = sg * sb
        m[:, 2, 0] = sb * ca
        m[:, 2, 1] = sb * sa
        m[:, 2, 2] = cb
    return out


def _origins_px(table: StarTable, particle_pixel: np.ndarray) -> np.ndarray | None:
    """``(n, 2)`` origins in px: ``rlnOriginX/YAngst`` / pixel size (3.1+), or ``rlnOriginX/Y``."""
    if table.has("rlnOriginXAngst") or table.has("rlnOriginYAngst"):
        names, pixel = ("rlnOriginXAngst", "rlnOriginYAngst"), particle_pixel
    elif table.has("rlnOriginX") or table.has("rlnOriginY"):
        names, pixel = ("rlnOriginX", "rlnOriginY"), None
    else:
        return None
    shifts = np.zeros((len(table), 2))
    for k, name in enumerate(names):
        if table.has(name):
            column = table.col(name, writable=False)
            shifts[:, k] = column if pixel is None else column / pixel
    return shifts


def _ctf_table(optics: StarOptics, notes: list[str]) -> np.ndarray | None:
    """``(n, 9)`` CTF table in ``CTF_COLUMNS`` order, or None (no defocus, or incomplete)."""
    table = optics.particles
    path, n = table.path, len(table)
    if not table.has("rlnDefocusU"):
        return None
    voltage = optics.per_particle("rlnVoltage", writable=False)
    cs = optics.per_particle("rlnSphericalAberration", writable=False)
    if voltage is None or cs is None:
        missing = "rlnVoltage" if voltage is None else "rlnSphericalAberration"
        notes.append(f"CTF incomplete (no {missing}): CTF not used")
        logger.warning("%s: no %s, CTF parameters ignored", path, missing)
        return None
    du = table.col("rlnDefocusU", writable=False)
    dv = table.col("rlnDefocusV", writable=False) if table.has("rlnDefocusV") else du
    q0 = optics.per_particle("rlnAmplitudeContrast", writable=False)
    if q0 is None:
        q0 = np.full(n, DEFAULT_AMPLITUDE_CONTRAST)
        notes.append(f"no rlnAmplitudeContrast: using {DEFAULT_AMPLITUDE_CONTRAST}")
    if np.any((q0 < 0) | (q0 >= 1)):
        raise CryogradError(f"{path}: rlnAmplitudeContrast must be in [0, 1)")
    if np.any(voltage <= 0):
        raise CryogradError(f"{path}: rlnVoltage must be positive")

    sources: list[np.ndarray | float] = [du, dv, 0.0, voltage, cs, q0, 0.0, 0.0, 1.0]
    for k, column in ((2, "rlnDefocusAngle"), (6, "rlnPhaseShift"), (7, "rlnCtfBfactor"),
                      (8, "rlnCtfScalefactor")):  # fmt: skip
        values = optics.per_particle(column, writable=False)
        sources[k] = sources[k] if values is None else values
    return _interleaved(sources, n)


def _interleaved(sources: list[np.ndarray | float], n: int) -> np.ndarray:
    """``(n, len(sources))`` float64 whose column ``k`` is ``sources[k]`` (``(n,)`` or a number),
    filled a block of rows at a time (each block in cache while its columns are written)."""
    out = np.empty((n, len(sources)), dtype=np.float64)
    for lo in range(0, n, _ROTATION_CHUNK):
        block = out[lo : lo + _ROTATION_CHUNK]
        for k, values in enumerate(sources):
            if isinstance(values, np.ndarray):
                block[:, k] = values[lo : lo + _ROTATION_CHUNK]
            else:
                block[:, k] = values
    return out


def _half_sets_and_classes(table: StarTable) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``rlnRandomSubset`` (checked to be 1 or 2) and ``rlnClassNumber`` as int64, or None."""
    half_set = None
    if table.has("rlnRandomSubset"):
        half_set = table.int_col("rlnRandomSubset")
        bad = ~np.isin(half_set, (1, 2))
        if bad.any():
            row = int(np.argmax(bad))
            raise CryogradError(
                f"{table.path}: data_{table.block} row {row + 1}, column rlnRandomSubset: value "
                f"{half_set[row]} is not 1 or 2"
            )
    class_number = None
    if table.has("rlnClassNumber"):
        class_number = table.int_col("rlnClassNumber")
    return half_set, class_number
