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


@pytest.fixture(params=["one-piece", "many-pieces"])
def reading_path(request, monkeypatch):
    """Read loop rows in one piece, or in many small pieces on threads."""
    if request.param == "many-pieces":
        monkeypatch.setattr(star_parser, "_PIECE_BYTES", 200)
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
    ],
)
def test_awkward_loops_match_starfile(tmp_path, rows):
    path = tmp_path / "a.star"
    path.write_text("data_t\nloop_\n_rlnA #1\n_rlnB #2\n" + rows + "\ndata_u\n_rlnC 3\n")
    _assert_same_blocks(starfile.read(path, always_dict=True), read_star_file(path))
