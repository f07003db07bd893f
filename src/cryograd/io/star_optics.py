"""Optics groups of a RELION STAR file, per RELION version.

* 3.1 and later: a ``data_optics`` table joined to the particles on ``rlnOpticsGroup``; pixel size
  ``rlnImagePixelSize``, box ``rlnImageSize``; other optics fields kept in ``OpticsGroup.extra``.
* 3.0: no optics table; pixel size ``rlnDetectorPixelSize · 1e4 / rlnMagnification`` per particle
  (or ``--angpix``); groups made from the distinct (pixel size, voltage, Cs, Q0) rows, numbered in
  order of first appearance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cryograd.errors import CryogradError
from cryograd.io.star_table import StarTable
from cryograd.particle_set import OpticsGroup

__all__ = ["StarOptics", "optics_from_table", "optics_relion30"]

_GROUP_FIELDS = {"rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize", "rlnImageSize"}


@dataclass
class StarOptics:
    """Optics of a particle table, normalised over RELION versions.

    Attributes
    ----------
    groups
        The optics groups.
    particle_group
        ``(n,)`` int64 group number of each particle.
    particle_pixel
        ``(n,)`` float64 pixel size of each particle in Å.
    particles
        The particle table.
    optics
        ``data_optics`` (3.1 and later) or None.
    particle_optics_row
        ``(n,)`` row of ``optics`` of each particle (None without ``optics``).
    """

    groups: list[OpticsGroup]
    particle_group: np.ndarray
    particle_pixel: np.ndarray
    particles: StarTable
    optics: StarTable | None = None
    particle_optics_row: np.ndarray | None = None

    def per_particle(self, column: str, *, writable: bool = True) -> np.ndarray | None:
        """``(n,)`` values from the particle table when there, else from the optics group
        (``writable=False``: maybe a read-only view of the particle table's column)."""
        if self.particles.has(column):
            return self.particles.col(column, writable=writable)
        if self.optics is not None and self.optics.has(column):
            return self.optics.col(column)[self.particle_optics_row]
        return None


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _particle_groups(table: StarTable, group_numbers: np.ndarray, n_optics: int) -> np.ndarray:
    """``(n,)`` optics group number of each particle, checked against ``data_optics``."""
    path, n = table.path, len(table)
    if table.has("rlnOpticsGroup"):
        particle_group = table.int_col("rlnOpticsGroup")
    elif n_optics == 1:
        particle_group = np.full(n, group_numbers[0], dtype=np.int64)
    else:
        raise CryogradError(f"{path}: data_{table.block} has no rlnOpticsGroup column")
    unknown = ~np.isin(particle_group, group_numbers)
    if unknown.any():
        row = int(np.argmax(unknown))
        raise CryogradError(
            f"{path}: data_{table.block} row {row + 1}, column rlnOpticsGroup: group "
            f"{particle_group[row]} is not in data_optics"
        )
    return particle_group


def optics_from_table(
    table: StarTable, optics: StarTable, angpix: float | None, notes: list[str]
) -> StarOptics:
    """Optics of a RELION 3.1+ file (``data_optics`` joined on ``rlnOpticsGroup``)."""
    path, df = table.path, optics.df
    group_numbers = optics.col("rlnOpticsGroup").astype(np.int64)
    if len(np.unique(group_numbers)) != len(group_numbers):
        raise CryogradError(f"{path}: data_optics repeats an rlnOpticsGroup number")
    particle_group = _particle_groups(table, group_numbers, len(df))
    per_row_index = np.searchsorted(np.sort(group_numbers), particle_group)
    particle_optics_row = np.argsort(group_numbers)[per_row_index]  # (n,)

    if angpix is not None:
        group_pixel = np.full(len(df), float(angpix))
        if not optics.has("rlnImagePixelSize"):
            notes.append(f"pixel size {angpix} A from --angpix")
    elif optics.has("rlnImagePixelSize"):
        group_pixel = optics.col("rlnImagePixelSize")
    else:
        raise CryogradError(
            f"{path}: data_optics has no rlnImagePixelSize; give the pixel size with --angpix"
        )
    if np.any(group_pixel <= 0):
        raise CryogradError(f"{path}: data_optics column rlnImagePixelSize: pixel size <= 0")
    group_box = optics.col("rlnImageSize").astype(np.int64) if optics.has("rlnImageSize") else None
    group_names = (
        df["rlnOpticsGroupName"].astype(str).tolist()
        if optics.has("rlnOpticsGroupName")
        else [f"opticsGroup{g}" for g in group_numbers]
    )
    groups = [
        OpticsGroup(
            int(g),
            group_names[i],
            float(group_pixel[i]),
            None if group_box is None else int(group_box[i]),
            {c: _plain(df[c].iloc[i]) for c in df.columns if c not in _GROUP_FIELDS},
        )
        for i, g in enumerate(group_numbers)
    ]
    return StarOptics(
        groups,
        particle_group,
        group_pixel[particle_optics_row],
        table,
        optics,
        particle_optics_row,
    )


def _pixel_relion30(table: StarTable, angpix: float | None) -> np.ndarray:
    """``(n,)`` pixel size in Å of a RELION 3.0 table, rounded to 1e-6 Å."""
    path, n = table.path, len(table)
    if angpix is not None:
        pixel = np.full(n, float(angpix))
    elif table.has("rlnImagePixelSize"):
        pixel = table.col("rlnImagePixelSize")
    elif table.has("rlnDetectorPixelSize") and table.has("rlnMagnification"):
        det = table.col("rlnDetectorPixelSize")
        mag = table.col("rlnMagnification")
        if np.any(mag <= 0) or np.any(det <= 0):
            row = int(np.argmax((mag <= 0) | (det <= 0)))
            raise CryogradError(
                f"{path}: data_{table.block} row {row + 1}: rlnMagnification and "
                "rlnDetectorPixelSize must be positive"
            )
        pixel = det * 1e4 / mag
    else:
        raise CryogradError(
            f"{path}: pixel size unknown (no data_optics, no rlnDetectorPixelSize/"
            "rlnMagnification); give it with --angpix"
        )
    if np.any(pixel <= 0):
        raise CryogradError(f"{path}: pixel size must be positive")
    return np.round(pixel, 6)


def optics_relion30(table: StarTable, angpix: float | None) -> StarOptics:
    """Optics of a RELION 3.0 file: groups from the distinct (pixel, voltage, Cs, Q0) rows."""
    pixel = _pixel_relion30(table, angpix)
    key_columns = [pixel]
    for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if table.has(c):
            key_columns.append(table.col(c))
    keys = np.stack(key_columns, axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # number groups in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    particle_group = rank[inverse.reshape(-1)] + 1
    box_col = table.col("rlnImageSize").astype(np.int64) if table.has("rlnImageSize") else None
    groups = []
    for g in range(len(order)):
        member = int(first[order[g]])
        box = None if box_col is None else int(box_col[member])
        groups.append(OpticsGroup(g + 1, f"opticsGroup{g + 1}", float(pixel[member]), box))
    return StarOptics(groups, particle_group.astype(np.int64), pixel, table)


def is_particle_table(df: object) -> bool:
    """Whether a block is a table holding image names (for the 'also hold particles' note)."""
    return isinstance(df, pd.DataFrame) and "rlnImageName" in df.columns
