"""A fast STAR parser that returns exactly what ``starfile.read(path, always_dict=True)`` returns.

``starfile`` walks the file one ``linecache`` line at a time and joins every loop row into one
Python string before handing it to ``pandas.read_csv``; a million-particle file then takes
seconds and gigabytes. This parser follows the same grammar (the same block, header and
loop-end rules, the same ``read_csv`` options, the same numeric coercion), but finds the loop
rows in a memory map and gives ``read_csv`` the file itself from the first row, so the rows are
never held as Python strings. Tables and values are the same as ``starfile``'s (a test compares
the two on every STAR file of the shared test data).

Grammar (``starfile``'s): lines are compared after ``strip()``. A line starting ``data_`` opens a
block named by the rest of the line; the block is the first ``loop_`` or ``_key value`` that
follows. A loop's header is its consecutive ``_name ...`` lines; blank lines after it are skipped;
its rows run to the next line starting ``data_`` (or the end of the file) and are read by
``pandas.read_csv`` (whitespace separated, ``#`` comments, single quotes read as double quotes,
only ``nan``/``NaN``/``<NA>`` as missing). Columns that parse as numbers become numbers.
"""

from __future__ import annotations

import io
import mmap
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["read_star_file"]

_DATA_LINE = re.compile(rb"^[ \t\r\f\v]*data_", re.MULTILINE)


@dataclass
class _Cursor:
    """A position in the file's bytes, read one line at a time."""

    buf: mmap.mmap | bytes
    pos: int = 0

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.buf)

    def peek(self) -> str:
        """The line at ``pos``, stripped (``''`` at the end of the file)."""
        end = self.buf.find(b"\n", self.pos)
        end = len(self.buf) if end < 0 else end
        return self.buf[self.pos : end].decode("utf-8", errors="replace").strip()

    def advance(self) -> None:
        end = self.buf.find(b"\n", self.pos)
        self.pos = len(self.buf) if end < 0 else end + 1


def read_star_file(path: str | os.PathLike) -> dict[str, pd.DataFrame | dict]:
    """Every data block of a STAR file: loops as DataFrames, ``_key value`` blocks as dicts.

    Parameters
    ----------
    path
        The STAR file.

    Returns
    -------
    dict
        Block name (after ``data_``) to block, in file order, as ``starfile.read(path,
        always_dict=True)`` gives them.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError, TypeError, pandas.errors.ParserError
        Malformed content (where ``starfile`` raises too).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return {}
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse_blocks(path, _Cursor(buf))


def _parse_blocks(path: Path, cur: _Cursor) -> dict[str, pd.DataFrame | dict]:
    blocks: dict[str, pd.DataFrame | dict] = {}
    while not cur.at_end:
        line = cur.peek()
        if not line.startswith("data_"):
            cur.advance()
            continue
        name = line[5:]
        block = None
        while not cur.at_end:
            cur.advance()
            line = cur.peek()
            if line.startswith("loop_"):
                block = _parse_loop(path, cur)
                break
            if line.startswith("_"):
                block = _parse_simple(cur)
                break
        if block is None:  # starfile fails here too (it unpacks None)
            raise ValueError(f"data_{name} holds no loop_ and no _key value lines")
        if isinstance(block, pd.DataFrame):
            block.name = name
        blocks[name] = block
    return blocks


def _parse_simple(cur: _Cursor) -> dict:
    block: dict = {}
    while not cur.at_end:
        line = cur.peek()
        if line.startswith("data"):
            break
        if line.startswith("_"):
            key, value = shlex.split(line)
            block[key[1:]] = _numericise(value)
        cur.advance()
    return block


def _parse_loop(path: Path, cur: _Cursor) -> pd.DataFrame:
    """The loop at ``cur`` (on its ``loop_`` line); leaves ``cur`` on the next ``data_`` line."""
    columns: list[str] = []
    cur.advance()
    while (line := cur.peek()).startswith("_"):
        columns.append(line.split()[0][1:])
        cur.advance()
    while not cur.at_end and cur.peek() == "":
        cur.advance()
    start = cur.pos
    found = _DATA_LINE.search(cur.buf, start)
    end = len(cur.buf) if found is None else found.start()
    cur.pos = end
    if start >= end:
        frame = pd.DataFrame(np.zeros(shape=(0, len(columns))))
        frame.columns = columns
        return frame
    frame = _read_rows(path, cur.buf, start, end)
    frame.columns = columns
    return _numeric_columns(frame)


def _read_rows(path: Path, buf, start: int, end: int) -> pd.DataFrame:
    """``pandas.read_csv`` of the bytes ``[start, end)`` with starfile's options."""
    options = dict(
        sep=r"\s+",
        header=None,
        comment="#",
        keep_default_na=False,
        na_values=["nan", "NaN", "<NA>"],
        engine="c",
        encoding="utf-8",
    )
    if buf.find(b"'", start, end) >= 0:
        # starfile reads single quotes as double quotes (the only quote read_csv knows)
        return pd.read_csv(io.BytesIO(buf[start:end].replace(b"'", b'"')), **options)
    if end < len(buf):
        return pd.read_csv(io.BytesIO(buf[start:end]), **options)
    # the loop runs to the end of the file: read_csv reads the file itself from the first row
    with open(path, "rb") as fh:
        fh.seek(start)
        return pd.read_csv(fh, **options)


def _numeric_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns that ``pandas.to_numeric`` accepts become numeric (as starfile does)."""
    for name in range(frame.shape[1]):
        column = frame.iloc[:, name]
        if pd.api.types.is_numeric_dtype(column.dtype):
            continue
        try:
            numeric = pd.to_numeric(column)
        except ValueError:
            continue
        if not bool(numeric.isna().all()):
            frame.isetitem(name, numeric)
    return frame


def _numericise(value: str) -> int | float | str:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value
