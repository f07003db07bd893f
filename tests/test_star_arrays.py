"""The STAR reader's per-particle arrays against independent references: rotation matrices
(compiled and NumPy) against ``geometry.euler_to_matrix``, the CTF table's row interleaving
against ``numpy.column_stack``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import cryograd.io.star as star
from cryograd.geometry import euler_to_matrix
from cryograd.io.star_table import StarTable


def _angles(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    angles = {
        "rlnAngleRot": rng.uniform(-180, 180, n),
        "rlnAngleTilt": rng.uniform(0, 180, n),
        "rlnAnglePsi": rng.uniform(-180, 180, n),
    }
    angles["rlnAngleRot"][:4] = [0.0, 90.0, -180.0, 360.0]  # exact angles too
    return pd.DataFrame(angles)


def _reference(df: pd.DataFrame, psi: bool) -> np.ndarray:
    rot, tilt = (torch.from_numpy(df[c].to_numpy()) for c in ("rlnAngleRot", "rlnAngleTilt"))
    g = torch.from_numpy(df["rlnAnglePsi"].to_numpy()) if psi else torch.zeros_like(rot)
    return euler_to_matrix(rot, tilt, g).numpy()


@pytest.mark.parametrize("psi", [True, False])
@pytest.mark.parametrize("compiled", [True, False])
def test_rotations_match_euler_to_matrix(monkeypatch, psi, compiled):
    if compiled and star._rotations_function() is None:
        pytest.skip("the compiled extension is not built")
    if not compiled:
        monkeypatch.setattr(star, "_rotations_function", lambda: None)
    df = _angles(50_003 if compiled else 40_000)  # not a multiple of the NumPy chunk
    columns = list(df.columns) if psi else ["rlnAngleRot", "rlnAngleTilt"]
    got = star._rotations(StarTable(Path("x.star"), df[columns], "particles"), [])
    assert got is not None and got.shape == (len(df), 3, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, _reference(df, psi), rtol=0, atol=1e-15)


def test_rotations_need_rot_and_tilt():
    notes: list[str] = []
    df = _angles(10)[["rlnAnglePsi"]]
    assert star._rotations(StarTable(Path("x.star"), df, "particles"), notes) is None
    assert notes == ["only rlnAnglePsi present (2D alignment): no 3D poses"]


@pytest.mark.parametrize("n", [0, 1, 16_384, 40_001])
def test_interleaved_matches_column_stack(n):
    rng = np.random.default_rng(n)
    sources = [rng.normal(size=n), 2.5, rng.normal(size=n), 0.0, rng.normal(size=n)]
    expected = np.column_stack([np.broadcast_to(np.asarray(s, float), (n,)) for s in sources])
    got = star._interleaved(sources, n)
    assert got.shape == (n, len(sources)) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "values",
    [
        np.array([1, 2, -3], dtype=np.int64),
        np.array([2**53 + 1, 1], dtype=np.int64),  # beyond float64's exact integers
        np.array([], dtype=np.int64),
        np.array([1.0, 2.5, -3.0]),
    ],
)
def test_int_col_matches_col_astype(values):
    table = StarTable(Path("x.star"), pd.DataFrame({"rlnClassNumber": values}), "particles")
    got = table.int_col("rlnClassNumber")
    expected = np.asarray(values, dtype=np.float64).astype(np.int64)
    assert got.dtype == np.int64 and got.flags.writeable
    np.testing.assert_array_equal(got, expected)


def test_int_col_names_a_bad_row():
    df = pd.DataFrame({"rlnClassNumber": ["1", "x"]})
    with pytest.raises(Exception, match=r"x\.star: data_particles row 2, column rlnClassNumber"):
        StarTable(Path("x.star"), df, "particles").int_col("rlnClassNumber")


def test_small_pages_context_restores_numpy_advice():
    switch = star._hugepage_switch()
    if switch is None:
        pytest.skip("this NumPy has no huge-page switch")
    before = switch(True)
    try:
        with star._SMALL_PAGES:
            with star._SMALL_PAGES:
                assert switch(False) is False  # off inside
            assert switch(False) is False  # still off while one context is open
        assert switch(True) is True  # restored when the last one closed
        with pytest.raises(ZeroDivisionError), star._SMALL_PAGES:
            raise ZeroDivisionError
        assert switch(True) is True  # restored after an error too
    finally:
        switch(before)
