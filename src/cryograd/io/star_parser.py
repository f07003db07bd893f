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

import ctypes
import io
import mmap
import os
import queue
import shlex
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from cryograd._native import native_function
from cryograd.errors import CryogradError

__all__ = ["read_star_file", "reader_threads"]

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

    def read_into(self, view: memoryview, offset: int) -> int:
        """Read into ``view`` from file offset ``offset``: the bytes read (fewer at the end)."""
        got = 0
        with open(self.path, "rb", buffering=0) as fh:
            fh.seek(offset)
            while got < len(view):
                n = fh.readinto(view[got:])
                if not n:
                    break
                got += n
        return got

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
    compiled = _read_rows_compiled(cur.buf, cur.pos, len(columns))
    frame, cur.pos = compiled if compiled is not None else _read_rows(cur.buf, cur.pos)
    if frame is None:
        frame = pd.DataFrame(np.zeros(shape=(0, len(columns))))
    else:
        frame = _numeric_columns(frame)
    frame.columns = columns
    return frame


def _data_line_in(piece: bytes) -> int:
    """Offset of the first line of ``piece`` that starts ``data_`` (after blanks), else -1.

    ``piece`` starts at a line start.
    """
    pos = 0
    while (pos := piece.find(b"data_", pos)) >= 0:
        line_start = pos
        while line_start > 0 and piece[line_start - 1 : line_start] in _BLANKS:
            line_start -= 1
        if line_start == 0 or piece[line_start - 1 : line_start] == b"\n":
            return line_start
        pos += 5
    return -1


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


class _Pieces:
    """The loop rows from ``start`` in pieces of about ``_PIECE_BYTES`` cut at line ends.

    Iterating yields the pieces (``bytes``); the rows end at the first line that starts
    ``data_`` (or at the end of the file), whose offset is ``end`` once the last piece is out.
    The file is read once, front to back.
    """

    def __init__(self, buf: _FileBytes, start: int) -> None:
        self.buf, self.end = buf, start

    def __iter__(self):
        buf, pos = self.buf, self.end
        while pos < len(buf):
            piece = buf[pos : pos + _PIECE_BYTES]
            while pos + len(piece) < len(buf) and not piece.endswith(b"\n"):
                more = buf[pos + len(piece) : pos + len(piece) + (1 << 16)]
                cut = more.find(b"\n")
                piece += more if cut < 0 else more[: cut + 1]
            stop = _data_line_in(piece)
            if stop >= 0:
                self.end = pos + stop
                yield piece[:stop]
                return
            pos = self.end = pos + len(piece)
            yield piece


def _read_rows(buf: _FileBytes, start: int) -> tuple[pd.DataFrame | None, int]:
    """``pandas.read_csv`` of the rows from ``start`` with starfile's options, and their end.

    The rows are read in pieces split at line ends, on up to two threads, and joined (the
    pieces' columns are joined as pandas joins its own internal chunks: int with float gives
    float). Every piece after the first is read with the first piece's column count, so short
    and long rows behave as in one read. The frame is None when there are no rows at all.
    """
    pieces = _Pieces(buf, start)
    stream = iter(pieces)
    data = next((p for p in stream if p.strip()), b"")  # the first piece that is not blank
    if not data:
        return None, pieces.end
    first = _read_piece(data, None)
    n_fields = None if first is None else first.shape[1]
    workers = reader_threads()
    first_rows = 0 if first is None else len(first)
    rows = _RowJoiner(max(1, first_rows) * (len(buf) - start) // len(data))
    rows.add(first)
    del first, data
    pending: deque = deque()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for piece in stream:
            pending.append(pool.submit(_read_piece, piece, n_fields))
            del piece
            while len(pending) > 2 * workers:
                rows.add(pending.popleft().result())
        while pending:
            rows.add(pending.popleft().result())
    return rows.frame(), pieces.end


class _RowJoiner:
    """The pieces' rows joined as ``pd.concat(pieces, ignore_index=True)`` joins them.

    A column with one NumPy dtype in every piece is copied into an array allocated for about
    ``expected_rows`` rows (an overestimate costs no memory: pages never written are never
    mapped; grown when short), and each piece is then freed, so the rows never sit
    in memory twice; a column whose dtype changes between pieces, or holds strings, is joined
    by ``pd.concat``.
    """

    def __init__(self, expected_rows: int) -> None:
        self.capacity = int(expected_rows * 1.05) + 1024
        self.rows = 0
        self.columns: list[np.ndarray | list[pd.Series]] | None = None

    def add(self, frame: pd.DataFrame | None) -> None:
        if frame is None or not len(frame):
            return
        m = len(frame)
        if self.columns is None:
            self.columns = [
                np.empty(self.capacity, dtype=c.dtype) if isinstance(c.dtype, np.dtype) else []
                for _, c in frame.items()
            ]
        if self.rows + m > self.capacity:
            self._grow(self.rows + m)
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

    def _grow(self, need: int) -> None:
        self.capacity = max(need, int(self.capacity * 1.5))
        assert self.columns is not None
        for k, slot in enumerate(self.columns):
            if isinstance(slot, np.ndarray):
                grown = np.empty(self.capacity, dtype=slot.dtype)
                grown[: self.rows] = slot[: self.rows]
                self.columns[k] = grown

    def frame(self) -> pd.DataFrame:
        if self.columns is None:
            raise pd.errors.EmptyDataError("No columns to parse from file")
        joined = {
            # spare capacity past ``rows`` was never written, so it holds no memory
            k: c[: self.rows] if isinstance(c, np.ndarray) else pd.concat(c, ignore_index=True)
            for k, c in enumerate(self.columns)
        }
        return pd.DataFrame(joined, copy=False)  # one block per column: no consolidating copy


# Loops with at least this many bytes of rows are read by the compiled row parser first
# (``_star_rows.c``), the pandas path being the fallback for whatever it does not take.
_COMPILED_MIN_BYTES = 1 << 20
_MAX_COLUMNS = 256  # the compiled parser's limit
_HEAD_BYTES = 1 << 20  # the first row's kinds are read from this many bytes
_LINE_TAIL = 1 << 16  # a piece is read with this many bytes more, for the line it ends in
_EXACT_INT = 2**53  # integers that convert to float64 exactly


@cache
def _rows_function():
    """``cryograd_star_rows`` of the compiled extension (ctypes), or None where it is absent."""
    args = [ctypes.c_void_p] + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 5
    return native_function("cryograd_star_rows", args, ctypes.c_int64)


@cache
def _word_dtype():
    """The dtype ``read_csv`` gives a column of words here, when it is pyarrow-backed strings
    (which the compiled path builds from its buffers); else None (the pandas path is used)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return None
    dtype = pd.read_csv(io.BytesIO(b"a/b\n"), **_PANDAS_OPTIONS).dtypes.iloc[0]
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        return dtype
    return None


def _first_row_kinds(piece: bytes, n_columns: int) -> np.ndarray | None:
    """``(n_columns,)`` int8 column kinds from the first row of ``piece``: 1 for a path-like word
    (``@`` or ``/``: image and micrograph names), 0 for a number; None when the row has another
    number of fields or a word that is neither (the compiled parser would give up on it)."""
    text = piece.lstrip(b" \t\n")
    cut = text.find(b"\n")
    words = (text if cut < 0 else text[:cut]).split()
    if len(words) != n_columns:
        return None
    kinds = [1 if (b"@" in w or b"/" in w) else 0 for w in words]
    if not all(k or _is_number(w) for k, w in zip(kinds, words)):
        return None
    return np.array(kinds, dtype=np.int8)


def _is_number(word: bytes) -> bool:
    """Whether Python reads ``word`` as a float (every number the compiled parser takes)."""
    try:
        float(word)
    except ValueError:
        return False
    return True


class _Scratch:
    """Reusable buffers of one piece in flight: its bytes (``raw``) and the compiled parser's
    outputs (``slots``: a row of 8-byte slots per column, numbers or word end offsets; ``words``:
    a byte buffer per word column). Reused from piece to piece, so their pages are mapped once."""

    def __init__(self, kinds: np.ndarray, size: int) -> None:
        self.kinds, self.size, self.base, self.length = kinds, 0, 0, 0
        self.grow(size)

    def grow(self, size: int) -> None:
        """Room for a piece of ``size`` bytes (kept when there is room already)."""
        if size <= self.size:
            return
        n_col, word_columns = len(self.kinds), np.flatnonzero(self.kinds)
        # a row takes at least 2 bytes per field (the field and a blank or the newline)
        budget = (size + 1) // (2 * n_col) + 1
        raw_bytes, slot_bytes = -(-size // 4096) * 4096, 8 * n_col * budget
        # one anonymous mapping: no page is touched before it is written, and all go back to
        # the system when the scratch is dropped
        self.raw = mmap.mmap(-1, raw_bytes + slot_bytes + len(word_columns) * size)
        whole = np.frombuffer(self.raw, np.uint8)
        self.address, self.size, self.budget = whole.ctypes.data, size, budget
        self.slots = whole[raw_bytes : raw_bytes + slot_bytes].view(np.int64).reshape(n_col, -1)
        words = whole[raw_bytes + slot_bytes :]
        self.words = {int(c): words[k * size : (k + 1) * size] for k, c in enumerate(word_columns)}


def _parse_span(buf: _FileBytes, span: tuple[int, int, int], kinds: np.ndarray, free):
    """The loop rows that start in ``[lo, hi)`` (``span``: ``(first, lo, hi)``, ``first`` the
    loop's first row) read and parsed by the compiled parser into a scratch from ``free`` (a
    queue, or a new one): ``(rows, is_float, scratch, stop, begin)``, ``begin`` the file offset of
    the piece's first line and ``stop`` the offset in the piece of a line that starts ``data_``
    (else its length); None where the parser gives up."""
    try:
        scratch = free.get_nowait()
    except queue.Empty:
        scratch = _Scratch(kinds, _PIECE_BYTES + _LINE_TAIL + 1)
    begin, length = _read_span(buf, span, scratch)
    scratch.length = length
    n_col = len(kinds)
    slot_ptrs = (ctypes.c_void_p * n_col)(*[scratch.slots[c].ctypes.data for c in range(n_col)])
    word_ptrs = (ctypes.c_void_p * n_col)(
        *[scratch.words[c].ctypes.data if kinds[c] else None for c in range(n_col)]
    )
    is_float = np.zeros(n_col, dtype=np.int8)
    stop = ctypes.c_int64(0)
    raw = scratch.address + (begin - scratch.base)
    rows = _rows_function()(raw, length, n_col, scratch.budget, kinds.ctypes.data, slot_ptrs,
                            word_ptrs, is_float.ctypes.data, ctypes.byref(stop))  # fmt: skip
    if rows < 0:
        free.put(scratch)
        return None
    return rows, is_float.astype(bool), scratch, stop.value, begin


def _read_span(buf: _FileBytes, span: tuple[int, int, int], scratch: _Scratch) -> tuple[int, int]:
    """Read the lines that start in ``[lo, hi)`` into ``scratch.raw`` (from file offset
    ``scratch.base``): ``(begin, length)``, the file offset of the first line and the bytes of
    the lines. A line starts at ``first`` or after a newline; one read of the span, the byte
    before it and ``_LINE_TAIL`` after finds both ends unless a line is longer than that."""
    first, lo, hi = span
    head = 0 if lo <= first else 1
    base = lo - head
    scratch.grow(hi - base + _LINE_TAIL)
    got = buf.read_into(memoryview(scratch.raw)[: hi - base + _LINE_TAIL], base)
    at_end = base + got >= len(buf)
    cut = _after_newline(scratch.raw, 0, got, at_end) if head else 0
    stop = _after_newline(scratch.raw, hi - base - 1, got, at_end)
    if cut < 0 or stop < 0:  # a line longer than the tail: find the ends in the file
        begin, end = _line_start(buf, first, lo), _line_start(buf, first, hi)
        scratch.grow(end - begin)
        buf.read_into(memoryview(scratch.raw)[: end - begin], begin)
        scratch.base = begin
        return begin, end - begin
    scratch.base = base
    return base + cut, stop - cut


def _after_newline(raw: mmap.mmap, pos: int, size: int, at_end: bool) -> int:
    """The offset after the first newline at or after ``pos`` in ``raw[:size]``; ``size`` when
    there is none and ``raw`` ends at the end of the file; else -1 (not read far enough)."""
    found = raw.find(b"\n", pos, size)
    return found + 1 if found >= 0 else (size if at_end else -1)


def _line_start(buf: _FileBytes, first: int, pos: int) -> int:
    """The first line start at or after ``pos`` (``first``, or after a newline; else EOF)."""
    if pos <= first:
        return first
    found = buf.find(b"\n", pos - 1)
    return len(buf) if found < 0 else found + 1


def reader_threads() -> int:
    """Threads the readers use: up to ``_MAX_THREADS``, no more than this process's CPUs."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, min(_MAX_THREADS, affinity))


def _read_rows_compiled(
    buf: _FileBytes, start: int, n_columns: int
) -> tuple[pd.DataFrame, int] | None:
    """:func:`_read_rows` by the compiled parser, or None (then pandas reads the rows): no
    extension, a small loop, no pyarrow strings, or rows it does not take. Pieces of about
    ``_PIECE_BYTES`` (the lines that start in each) are read and parsed on up to two threads
    and joined in file order; the rows end at the first line that starts ``data_``."""
    if len(buf) - start < _COMPILED_MIN_BYTES or not 0 < n_columns <= _MAX_COLUMNS:
        return None
    if _rows_function() is None or (dtype := _word_dtype()) is None:
        return None
    kinds = _first_row_kinds(buf[start : start + _HEAD_BYTES], n_columns)
    if kinds is None:
        return None
    workers = reader_threads()
    columns = _CompiledColumns(kinds, len(buf) - start)
    free: queue.SimpleQueue = queue.SimpleQueue()
    pending: deque = deque()
    end: int | None = -1  # -1: the rows go on; None: the compiled parser gave up
    with ThreadPoolExecutor(workers) as pool:
        for lo in range(start, len(buf), _PIECE_BYTES):
            span = (start, lo, min(len(buf), lo + _PIECE_BYTES))
            pending.append(pool.submit(_parse_span, buf, span, kinds, free))
            while end == -1 and len(pending) > 2 * workers:
                end = _take(pending, columns, free)
            if end != -1:
                break
        while end == -1 and pending:
            end = _take(pending, columns, free)
        for job in pending:
            job.cancel()
    frame = None if end is None else columns.frame(dtype)
    if frame is None or end is None:
        return None
    return frame, len(buf) if end == -1 else end


def _take(pending: deque, columns: _CompiledColumns, free) -> int | None:
    """Add the oldest parsed piece and give its scratch back to ``free``: -1 (the rows go on),
    the offset where the next block starts (in this piece), or None (the parser gave up)."""
    parsed = pending.popleft().result()
    if parsed is None:
        return None
    rows, is_float, scratch, stop, begin = parsed
    columns.add(rows, is_float, scratch)
    free.put(scratch)
    return begin + stop if stop < scratch.length else -1


class _CompiledColumns:
    """The compiled parser's pieces joined into columns, as :class:`_RowJoiner` joins pandas'
    (int64 where every row is an integer, float64 once one is not; words as pyarrow strings).

    The columns are allocated at the first piece with rows, for about as many rows as its bytes
    per row give the loop (pages never written hold no memory; grown when short), and each
    piece's rows are copied in after the last; a piece's integers become doubles at the end if
    another piece's were not integers. Words are copied into one byte buffer per column.
    """

    def __init__(self, kinds: np.ndarray, loop_bytes: int) -> None:
        self.kinds, self.loop_bytes = kinds, loop_bytes
        self.capacity = self.rows = 0
        self.numbers = {int(c): np.empty(0, np.int64) for c in np.flatnonzero(kinds == 0)}
        self.ends = {int(c): np.zeros(1, np.int64) for c in np.flatnonzero(kinds == 1)}
        self.data = {c: np.empty(0, np.uint8) for c in self.ends}
        self.used = dict.fromkeys(self.ends, 0)
        self.pieces: list[tuple[int, int, np.ndarray]] = []  # (row0, rows, is_float)

    def _reserve(self, rows: int, scratch: _Scratch) -> None:
        """Room for ``rows`` more rows (the first time: for the loop, as this piece gives)."""
        if self.rows + rows <= self.capacity:
            return
        if self.capacity == 0:  # as many bytes per row as this piece
            guess = int(self.loop_bytes * rows / max(1, scratch.length) * 1.05) + 1024
        else:
            guess = int(self.capacity * 1.5)
        self.capacity = max(self.rows + rows, guess)
        for c, col in self.numbers.items():
            self.numbers[c] = _grown(col, self.rows, self.capacity)
        for c, col in self.ends.items():  # ends[c][0] = 0, then row r's end at r + 1
            self.ends[c] = _grown(col, self.rows + 1, self.capacity + 1)

    def add(self, rows: int, is_float: np.ndarray, scratch: _Scratch) -> None:
        """Copy one parsed piece (the next in file order) out of its scratch."""
        if rows == 0:
            return
        self._reserve(rows, scratch)
        row0 = self.rows
        self.pieces.append((row0, rows, is_float))
        for c, col in self.numbers.items():
            col[row0 : row0 + rows] = scratch.slots[c, :rows]
        for c, col in self.ends.items():
            used, size = self.used[c], int(scratch.slots[c, rows - 1])
            if used + size > len(self.data[c]):
                guess = size * self.capacity // rows + (1 << 20)  # as many bytes per row
                grown = max(used + size, guess if used == 0 else len(self.data[c]) * 3 // 2)
                self.data[c] = _grown(self.data[c], used, grown)
            self.data[c][used : used + size] = scratch.words[c][:size]
            np.add(scratch.slots[c, :rows], used, out=col[row0 + 1 : row0 + rows + 1])
            self.used[c] = used + size
        self.rows += rows

    def _column(self, raw: np.ndarray, c: int) -> np.ndarray | None:
        """Number column ``c`` (int64, or float64 when a piece had a non-integer); None when an
        integer would not convert to float64 exactly."""
        if any(f[c] for _, _, f in self.pieces):
            out = raw.view(np.float64)
            for row0, rows, f in self.pieces:
                if not f[c]:
                    ints = raw[row0 : row0 + rows]
                    if not bool(np.all(np.abs(ints) < _EXACT_INT)):
                        return None
                    out[row0 : row0 + rows] = ints.astype(np.float64)
            raw = out
        return raw[: self.rows]

    def frame(self, dtype) -> pd.DataFrame | None:
        import pyarrow as pa

        joined: dict = {}
        for c, raw in self.numbers.items():
            column = self._column(raw, c)
            if column is None:
                return None
            joined[c] = column
        for c, ends in self.ends.items():
            offsets = ends[: self.rows + 1]  # no copy: the Arrow array holds the buffers
            data = self.data[c] if len(self.data[c]) else np.zeros(1, np.uint8)
            buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
            joined[c] = dtype.__from_arrow__(
                pa.Array.from_buffers(pa.large_string(), self.rows, buffers)
            )
        return pd.DataFrame({c: joined[c] for c in range(len(self.kinds))}, copy=False)


def _grown(arr: np.ndarray, keep: int, size: int) -> np.ndarray:
    """A new array of ``size`` elements holding ``arr[:keep]``."""
    out = np.empty(size, dtype=arr.dtype)
    out[:keep] = arr[:keep]
    return out


def _read_piece(data: bytes, n_fields: int | None) -> pd.DataFrame | None:
    """One piece of rows (None when it holds none: only comments or blank lines)."""
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
