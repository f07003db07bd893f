"""A fast STAR parser that returns exactly what ``starfile.read(path, always_dict=True)`` returns.

``starfile`` walks the file one ``linecache`` line at a time and joins every loop row into one
Python string before handing it to ``pandas.read_csv``; a million-particle file then takes
seconds and gigabytes. This parser follows the same grammar (the same block, header and
loop-end rules, the same ``read_csv`` options, the same numeric coercion), but reads only the
header lines one by one; a loop's rows go to ``read_csv`` straight from the file, in pieces of a
few MB read on two threads (pandas' tokenizer runs without the GIL) and joined into columns
allocated once, so the rows are never held as one Python string nor twice as tables. Tables and
values are the same as ``starfile``'s (a test compares the two on every STAR file of the shared
test data, reading in one piece and in many).

Grammar (``starfile``'s): lines are compared after ``strip()``. A line starting ``data_`` opens a
block named by the rest of the line; the block is the first ``loop_`` or ``_key value`` that
follows. A loop's header is its consecutive ``_name ...`` lines; blank lines after it are skipped;
its rows run to the next line starting ``data_`` (or the end of the file) and are read by
``pandas.read_csv`` (whitespace separated, ``#`` comments, single quotes read as double quotes,
only ``nan``/``NaN``/``<NA>`` as missing). Columns that parse as numbers become numbers.
"""

from __future__ import annotations

import io
import os
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryograd.errors import CryogradError

__all__ = ["read_star_file"]

_BLANKS = (b" ", b"\t", b"\r", b"\f", b"\v")
# Values pandas reads as missing (starfile's ``na_values``).
_NA_STRINGS = ["nan", "NaN", "<NA>"]


class _FileBytes:
    """Read-only byte access to a file by positioned reads.

    Offers the slice of the ``bytes`` interface the parser needs (``len``, slicing, ``find``).
    Reads go through the page cache without mapping the file, so a large file does not count
    towards the process's resident memory; each read opens its own handle (safe from threads).
    """

    _BLOCK = 1 << 22

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = os.path.getsize(path)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, span: slice) -> bytes:
        start, stop = (
            max(span.start or 0, 0),
            min(self.size, self.size if span.stop is None else span.stop),
        )
        if stop <= start:
            return b""
        with open(self.path, "rb") as fh:
            fh.seek(start)
            return fh.read(stop - start)

    def count_lines(self, start: int, end: int) -> int:
        """Number of lines in ``[start, end)`` (an upper bound on its rows)."""
        count = 1
        for pos in range(start, end, self._BLOCK):
            count += self[pos : min(end, pos + self._BLOCK)].count(b"\n")
        return count

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        end = self.size if end is None else min(end, self.size)
        pos = start
        while pos < end:
            chunk = self[pos : min(end, pos + self._BLOCK + len(sub) - 1)]
            found = chunk.find(sub)
            if found >= 0:
                return pos + found
            pos += self._BLOCK
        return -1


@dataclass
class _Cursor:
    """A position in the file, read one line at a time."""

    buf: _FileBytes
    pos: int = 0
    _line_end: int = -1

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.buf)

    def _end_of_line(self) -> int:
        if self._line_end < self.pos:
            end = self.buf.find(b"\n", self.pos)
            self._line_end = len(self.buf) if end < 0 else end
        return self._line_end

    def peek(self) -> str:
        """The line at ``pos``, stripped (``''`` at the end of the file)."""
        return self.buf[self.pos : self._end_of_line()].decode("utf-8", errors="replace").strip()

    def advance(self) -> None:
        self.pos = min(len(self.buf), self._end_of_line() + 1)


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
    with open(path, "rb"):  # FileNotFoundError, IsADirectoryError, PermissionError as usual
        pass
    return _parse_blocks(path, _Cursor(_FileBytes(path)))


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
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            raise CryogradError(f"{path}: column _{name} is named twice in one loop")
        seen.add(name)
    while not cur.at_end and cur.peek() == "":
        cur.advance()
    start = cur.pos
    end = _next_data_line(cur.buf, start)
    cur.pos = end
    if start >= end:
        frame = pd.DataFrame(np.zeros(shape=(0, len(columns))))
        frame.columns = columns
        return frame
    frame = _numeric_columns(_read_rows(cur.buf, start, end))
    frame.columns = columns
    return frame


def _next_data_line(buf: _FileBytes, start: int) -> int:
    """Offset of the first line at or after ``start`` that starts ``data_`` (after blanks)."""
    pos = start
    while (pos := buf.find(b"data_", pos)) >= 0:
        line_start = pos
        while line_start > start and buf[line_start - 1 : line_start] in _BLANKS:
            line_start -= 1
        if line_start == start or buf[line_start - 1 : line_start] == b"\n":
            return line_start
        pos += 5
    return len(buf)


_PANDAS_OPTIONS = dict(
    sep=r"\s+",
    header=None,
    comment="#",
    keep_default_na=False,
    na_values=_NA_STRINGS,
    engine="c",
    encoding="utf-8",
)
# Rows are read in pieces of about this many bytes, on several threads (pandas' tokenizer and
# number parser run without the GIL), so that a large loop never sits in memory twice.
_PIECE_BYTES = 4 << 20
_MAX_THREADS = 2


def _read_rows(buf: _FileBytes, start: int, end: int) -> pd.DataFrame:
    """``pandas.read_csv`` of the bytes ``[start, end)`` with starfile's options.

    Large loops are read in pieces split at line ends, on up to two threads, and joined (the
    pieces' columns are joined as pandas joins its own internal chunks: int with float gives
    float). Every piece after the first is read with the first piece's column count, so short
    and long rows behave as in one read.
    """
    bounds = [start]
    while end - bounds[-1] > _PIECE_BYTES:
        cut = buf.find(b"\n", bounds[-1] + _PIECE_BYTES, end)
        if cut < 0:
            break
        bounds.append(cut + 1)
    bounds.append(end)
    if len(bounds) == 2:
        frame = _read_piece(buf, start, end, None)
        if frame is None:
            raise pd.errors.EmptyDataError("No columns to parse from file")
        return frame
    first = _read_piece(buf, bounds[0], bounds[1], None)
    n_fields = None if first is None else first.shape[1]
    workers = min(
        _MAX_THREADS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    )
    rows = _RowJoiner(buf.count_lines(start, end))
    rows.add(first)
    del first
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for frame in pool.map(
            lambda k: _read_piece(buf, bounds[k], bounds[k + 1], n_fields),
            range(1, len(bounds) - 1),
        ):
            rows.add(frame)
            del frame
    return rows.frame()


class _RowJoiner:
    """The pieces' rows joined as ``pd.concat(pieces, ignore_index=True)`` joins them.

    A column with one NumPy dtype in every piece is copied into an array allocated once for
    ``max_rows`` rows (each piece is then freed), so the rows never sit in memory twice; a
    column whose dtype changes between pieces, or holds strings, is joined by ``pd.concat``.
    """

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.rows = 0
        self.columns: list[np.ndarray | list[pd.Series]] | None = None

    def add(self, frame: pd.DataFrame | None) -> None:
        if frame is None or not len(frame):
            return
        m = len(frame)
        if self.columns is None:
            self.columns = [
                np.empty(self.max_rows, dtype=c.dtype) if isinstance(c.dtype, np.dtype) else []
                for _, c in frame.items()
            ]
        for k, (_, column) in enumerate(frame.items()):
            slot = self.columns[k]
            if isinstance(slot, np.ndarray) and column.dtype == slot.dtype:
                slot[self.rows : self.rows + m] = column.to_numpy()
                continue
            if isinstance(slot, np.ndarray):  # the dtype changed: join this column by pandas
                slot = self.columns[k] = [pd.Series(slot[: self.rows].copy())]
            # a NumPy column is copied off its piece's 2D block, so the block can be freed
            slot.append(column.copy() if isinstance(column.dtype, np.dtype) else column)
        self.rows += m

    def frame(self) -> pd.DataFrame:
        if self.columns is None:
            raise pd.errors.EmptyDataError("No columns to parse from file")
        joined = {
            k: c[: self.rows] if isinstance(c, np.ndarray) else pd.concat(c, ignore_index=True)
            for k, c in enumerate(self.columns)
        }
        return pd.DataFrame(joined, copy=False)  # one block per column: no consolidating copy


def _read_piece(buf, start: int, end: int, n_fields: int | None) -> pd.DataFrame | None:
    """One piece of rows (None when it holds none: only comments or blank lines)."""
    data = buf[start:end]
    if b"'" in data:
        # starfile reads single quotes as double quotes (the only quote read_csv knows)
        data = data.replace(b"'", b'"')
    names = None if n_fields is None else list(range(n_fields))
    try:
        return pd.read_csv(io.BytesIO(data), names=names, **_PANDAS_OPTIONS)
    except pd.errors.EmptyDataError:
        return None  # only comments or blank lines; an error when every piece is so


def _numeric_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns that ``pandas.to_numeric`` accepts become numeric (as starfile does)."""
    for name in range(frame.shape[1]):
        column = frame.iloc[:, name]
        if pd.api.types.is_numeric_dtype(column.dtype):
            continue
        try:
            pd.to_numeric(column.iloc[:1])  # one word that is no number: no need to try all
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
