"""Image names: ``parse_image_names`` against a plain-Python split, and ``resolve_image_paths``
against ``resolve_image_path`` one name at a time."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryograd.errors import CryogradError
from cryograd.particle_set import parse_image_names, resolve_image_path, resolve_image_paths


def _reference_split(names: list[str]) -> tuple[list[str], list[int], list[int]]:
    """(unique files in order of first appearance, file index, 0-based image index)."""
    files: dict[str, int] = {}
    ids, indices = [], []
    for name in names:
        number, _, file = name.strip().partition("@")
        ids.append(files.setdefault(file, len(files)))
        indices.append(int(number) - 1)
    return list(files), ids, indices


def _names(rows: int, width: int, per_stack: int, shuffle: bool) -> list[str]:
    names = [
        f"{k % per_stack + 1:0{width}d}@Extract/job012/mic_{k // per_stack:05d}.mrcs"
        for k in range(rows)
    ]
    if shuffle:
        np.random.default_rng(1).shuffle(names)
    return names


@pytest.mark.parametrize(
    ("width", "per_stack", "shuffle", "strings"),
    [
        (6, 200, False, "pyarrow"),  # RELION's sorted fixed-width names
        (6, 3, False, "pyarrow"),  # short runs
        (6, 200, True, "pyarrow"),  # unsorted
        (3, 7, False, "python"),  # pandas' own strings
    ],
)
def test_parse_image_names_matches_plain_split(tmp_path, width, per_stack, shuffle, strings):
    pytest.importorskip("pyarrow")
    names = _names(2000, width, per_stack, shuffle)
    series = pd.Series(names, dtype=pd.StringDtype(strings))
    files, ids, indices = parse_image_names(series, tmp_path, None, "x.star")
    ref_files, ref_ids, ref_indices = _reference_split(names)
    assert files == [Path(tmp_path, f) for f in ref_files]  # no such files: the first candidate
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(indices, ref_indices)


def test_parse_image_names_varying_widths_and_bad_digits(tmp_path):
    names = ["1@a/s1.mrcs", "12@a/s1.mrcs", "000003@b/s2.mrcs", "7@a/s1.mrcs"]
    files, ids, indices = parse_image_names(pd.Series(names), tmp_path, None, "x.star")
    ref_files, ref_ids, ref_indices = _reference_split(names)
    assert files == [Path(tmp_path, f) for f in ref_files]
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(indices, ref_indices)
    bad = ["000001@a/s.mrcs", "00000x@a/s.mrcs"]  # one width, a non-digit
    with pytest.raises(CryogradError, match=r"x\.star: row 2: rlnImageName '00000x@a/s\.mrcs'"):
        parse_image_names(pd.Series(bad, dtype="string[pyarrow]"), tmp_path, None, "x.star")


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    """A metadata folder and a data folder holding some of the files named below."""
    meta, data = tmp_path / "meta", tmp_path / "data"
    for folder in (meta / "Extract", data / "Extract", data):
        folder.mkdir(parents=True, exist_ok=True)
    for f in (meta / "Extract" / "in_meta.mrcs", data / "Extract" / "in_data.mrcs"):
        f.write_bytes(b"")
    (data / "only_base.mrcs").write_bytes(b"")
    (meta / "Extract" / "sub.mrcs").mkdir()  # a folder is not a file
    return meta, data


def test_resolve_image_paths_matches_one_at_a_time(tmp_path, monkeypatch):
    meta, data = _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    names = [
        "Extract/in_meta.mrcs",
        "Extract/in_data.mrcs",
        "Other/only_base.mrcs",
        "only_base.mrcs",
        "Extract/sub.mrcs",
        "Extract/missing.mrcs",
        "meta/Extract/in_meta.mrcs",  # found from the working folder
        "Extract//in_meta.mrcs",
        "./Extract/../Extract/in_meta.mrcs",
        "Extract/",
        str(meta / "Extract" / "in_meta.mrcs"),  # absolute
        str(tmp_path / "nowhere" / "only_base.mrcs"),
        "/",
    ]
    for base in (meta, Path("meta"), Path(".")):
        for datadir in (None, data, Path("data"), Path(str(data) + "/")):
            expected = [resolve_image_path(n, base, datadir) for n in names]
            assert resolve_image_paths(names, base, datadir) == expected, (base, datadir)
    assert os.path.isfile(resolve_image_paths(["Extract/in_meta.mrcs"], meta, None)[0])
