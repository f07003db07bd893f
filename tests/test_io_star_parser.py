"""cryograd's STAR parser gives exactly starfile's tables, on every STAR file of ../shared/data.

Loops are read in one piece and in many small pieces on threads, and both are compared with
``starfile.read(path, always_dict=True)``: same blocks in the same order, same column names,
dtypes and values (exactly), same ``_key value`` dicts (values and types).
"""

from __future__ import annotations

import pandas as pd
import pytest
import starfile

import cryograd.io.star_parser as star_parser
from cryograd.io.star_parser import read_star_file
from tests.conftest import SHARED_DATA

STAR_FILES = sorted(SHARED_DATA.rglob("*.star")) if SHARED_DATA.is_dir() else []


def _assert_same_blocks(expected: dict, got: dict) -> None:
    assert list(got) == list(expected)
    for name, block in expected.items():
        if isinstance(block, pd.DataFrame):
            assert isinstance(got[name], pd.DataFrame), name
            pd.testing.assert_frame_equal(got[name], block, check_exact=True)
        else:
            assert got[name] == block, name
            assert [type(v) for v in got[name].values()] == [type(v) for v in block.values()]


def _starfile_or_error(path):
    try:
        return starfile.read(path, always_dict=True), None
    except Exception as exc:  # noqa: BLE001 - any starfile failure must be a failure here too
        return None, exc


@pytest.fixture(
    params=["one-piece", "many-pieces", "compiled", "compiled-pieces", "compiled-short-tail"]
)
def reading_path(request, monkeypatch):
    """Read loop rows in one piece, or in many small pieces on threads; by pandas, or by the
    compiled row parser first for every loop (it falls back to pandas where it gives up); with
    a short tail, the compiled reader often finds a piece's last line end in the file."""
    if request.param.startswith("compiled"):
        if star_parser._rows_function() is None:
            pytest.skip("the compiled extension is not built")
        monkeypatch.setattr(star_parser, "_COMPILED_MIN_BYTES", 0)
    else:
        monkeypatch.setattr(star_parser, "_COMPILED_MIN_BYTES", 1 << 62)
    if request.param.endswith(("pieces", "tail")):
        monkeypatch.setattr(star_parser, "_PIECE_BYTES", 200)
    if request.param.endswith("tail"):
        monkeypatch.setattr(star_parser, "_LINE_TAIL", 16)
    return request.param


@pytest.mark.skipif(not STAR_FILES, reason=f"shared test data not found at {SHARED_DATA}")
@pytest.mark.parametrize("path", STAR_FILES, ids=lambda p: str(p.relative_to(SHARED_DATA)))
def test_tables_equal_starfile(path, reading_path):
    expected, error = _starfile_or_error(path)
    if error is not None:
        with pytest.raises(Exception):  # noqa: B017 - starfile fails: so must we
            read_star_file(path)
        return
    _assert_same_blocks(expected, read_star_file(path))


@pytest.mark.parametrize(
    "rows",
    [
        "a  1\nb 2 \n",  # two spaces, a trailing space
        "a 1\n# comment\nb 2\n",  # a comment line
        "'a b' 1\nc 2\n",  # a quoted value
        "a\t1\nb 2\n",  # a tab
        "nan 1\nb 2\n",  # a missing-value word among strings
        "1 2\n3 x\n",  # numbers then a string in one column
        "2020-01-01 1\n2020-01-02 2\n",  # dates stay strings
        # rows the compiled parser reads (or leaves to pandas): numbers and path-like words
        "1 a/b\n2.5 c@d\n",  # an integer column becomes float
        "1e3 x@y\n-0.5E-2 z/w\n+7 q/r\n",  # exponents, signs
        "-0.000000 a/b\n   \n0.1 c/d\n",  # a negative zero, a blank line
        "1 a/b\n2 3\n",  # a number among words
        "1 a/b\n2 nan\n",  # a missing-value word among words
        "12345678901234567 a/b\n1.5 c/d\n",  # an integer beyond 2^53 in a float column
        "0.12345678901234567890 a/b\n",  # more digits than the exact range
        "1 a/b 3\n",  # more fields than columns
        "1 a/b\n2\n",  # fewer fields
        "1 a/b\n2 c/d # note\n",  # a trailing comment
        "1 a/b\n\n2.5 c/d\n" * 30 + "7 e/f\n",  # blank lines inside a loop of many pieces
    ],
)
def test_awkward_loops_match_starfile(tmp_path, rows, reading_path):
    path = tmp_path / "a.star"
    path.write_text("data_t\nloop_\n_rlnA #1\n_rlnB #2\n" + rows + "\ndata_u\n_rlnC 3\n")
    expected, error = _starfile_or_error(path)
    if error is not None:
        with pytest.raises(Exception):  # noqa: B017 - starfile fails: so must we
            read_star_file(path)
        return
    _assert_same_blocks(expected, read_star_file(path))
