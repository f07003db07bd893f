"""STAR blocks as tables: every block of a file, the particle table, checked numeric columns."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryograd.errors import CryogradError
from cryograd.io.star_columns import POSE_COLUMNS
from cryograd.io.star_parser import read_star_file

__all__ = ["StarTable", "find_particle_block", "optics_table", "read_star_blocks"]

_PARTICLE_MARKERS = ("rlnImageName", "rlnDefocusU")
_EXACT_INT = 2**53  # integers that float64 holds exactly


def read_star_blocks(path: Path) -> dict:
    """All blocks of a STAR file, as ``starfile.read(path, always_dict=True)`` gives them.

    Raises
    ------
    CryogradError
        The file does not parse (naming the first ragged loop row when there is one), or holds
        no data block.
    """
    try:
        blocks = read_star_file(path)
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


def find_particle_block(path: Path, blocks: dict) -> tuple[str, pd.DataFrame]:
    """(name, table) of the particle table: ``data_particles``, else the first with particles."""
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if "particles" in tables and len(tables["particles"].columns):
        return "particles", tables["particles"]
    for marker in _PARTICLE_MARKERS:
        for name, df in tables.items():
            if marker in df.columns:
                return name, df
    for name, df in tables.items():
        if all(c in df.columns for c in POSE_COLUMNS):
            return name, df
    names = ", ".join(f"data_{k}" for k in blocks) or "none"
    raise CryogradError(
        f"{path}: no particle table (no block with rlnImageName, rlnDefocusU or Euler angles; "
        f"blocks: {names})"
    )


def optics_table(path: Path, blocks: dict) -> pd.DataFrame | None:
    """``data_optics`` as a checked table, or None when the file has none (RELION 3.0)."""
    optics = blocks.get("optics")
    if optics is None:
        return None
    if not isinstance(optics, pd.DataFrame):
        # a ``_key value`` block: one optics group written without loop_
        try:
            optics = pd.DataFrame([optics])
        except Exception:  # noqa: BLE001
            raise CryogradError(f"{path}: data_optics is not a table") from None
    if "rlnOpticsGroup" not in optics.columns:
        raise CryogradError(f"{path}: data_optics has no rlnOpticsGroup column")
    if len(optics) == 0:
        raise CryogradError(f"{path}: data_optics is empty")
    return optics


@dataclass
class StarTable:
    """One STAR table and where it came from, for columns checked with clear errors.

    Attributes
    ----------
    path
        The STAR file (for messages).
    df
        The table.
    block
        Its block name (without ``data_``).
    """

    path: Path
    df: pd.DataFrame
    block: str

    def __len__(self) -> int:
        return len(self.df)

    def has(self, column: str) -> bool:
        return column in self.df.columns

    def col(self, column: str, *, writable: bool = True) -> np.ndarray:
        """``(n,)`` float64 column, every value finite, else an error naming row and column.

        ``writable=False``: a read-only view of a float64 column where it is one (no copy).
        """
        raw = self.df[column]
        if isinstance(raw.dtype, np.dtype) and raw.dtype.kind in "iuf":
            values = raw.to_numpy(dtype=np.float64, copy=writable)  # parsed as numbers already
        elif pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
            values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            try:
                values = pd.to_numeric(raw, errors="coerce").to_numpy(
                    dtype=np.float64, na_value=np.nan
                )
            except (TypeError, ValueError):
                values = np.full(len(raw), np.nan)
        values = np.require(values, dtype=np.float64, requirements=["W", "C"] if writable else "C")
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            value = raw.iloc[row]
            shown = repr(value) if isinstance(value, str) else str(value)
            raise CryogradError(
                f"{self.path}: data_{self.block} row {row + 1}, column {column}: "
                f"value {shown} is not a finite number"
            )
        return values

    def int_col(self, column: str) -> np.ndarray:
        """``col(column).astype(np.int64)``: a copy of an int64 column of integers that float64
        holds exactly, without the float64 round trip; else through :meth:`col`."""
        raw = self.df[column]
        if raw.dtype == np.int64:
            values = raw.to_numpy()
            if not len(values) or (values.min() > -_EXACT_INT and values.max() < _EXACT_INT):
                return values.copy()
        return self.col(column).astype(np.int64)

    def col_or(self, column: str, default: np.ndarray | None = None) -> np.ndarray | None:
        """The column when present, else ``default``."""
        return self.col(column) if self.has(column) else default
