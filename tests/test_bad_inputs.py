"""The promise for bad input, over generated mutations of a tiny valid STAR + MRC set.

Every case: exit status 2, exactly one ``cryograd: error:`` line naming the file or the option
(log lines before it are fine; usage text and tracebacks are not), and nothing left behind in
(or beside) the output folder. Parametrised mutations of metadata, pixels, MRC headers and
options, plus hypothesis on STAR text and MRC header bytes (bounded examples).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._tiny_set import (
    assert_one_error_line,
    images,
    leftovers,
    rows,
    run_main,
    write_set,
    write_volume,
)

FAST = ["--no-progress", "--device", "cpu"]
COLUMNS = {"rot": 1, "tilt": 2, "psi": 3, "ox": 4, "oy": 5, "dfu": 6, "dfv": 7, "scale": 11}


def _refused(argv, capsys, out: Path | None, names: tuple[str, ...]) -> str:
    code, _, err = run_main(argv, capsys)
    assert code == 2, err
    line = assert_one_error_line(err, names)
    if out is not None:
        assert leftovers(out) == [], leftovers(out)
    return line


# -- metadata of one row -----------------------------------------------------------------------

ROW_CASES = [
    (col, value, row)
    for col, values in {
        "rot": ["nan", "inf"],
        "tilt": ["nan", "-inf"],
        "psi": ["nan"],
        "ox": ["nan", "inf"],
        "oy": ["-inf"],
        "dfu": ["nan", "3e6", "-5e5"],
        "dfv": ["inf", "9e9"],
        "scale": ["-1", "0", "-0.5", "nan"],
    }.items()
    for value in values
    for row in (0, 11, 23)
]


@pytest.mark.parametrize("col, value, row", ROW_CASES)
def test_bad_value_in_one_row(tmp_path, capsys, col, value, row):
    r = rows()
    r[row][COLUMNS[col]] = value
    star = write_set(tmp_path / "data", particle_rows=r)
    out = tmp_path / "run"
    _refused(["reconstruct", star, "-o", out, *FAST], capsys, out, ("particles.star",))


@pytest.mark.parametrize("value", ["1.5", "0.8", "2.5", "15", "99"])
def test_defocus_in_micrometres(tmp_path, capsys, value):
    r = rows()
    for row in r:
        row[6] = row[7] = value
    star = write_set(tmp_path / "data", particle_rows=r)
    out = tmp_path / "run"
    line = _refused(["reconstruct", star, "-o", out, *FAST], capsys, out, ("particles.star",))
    assert "µm" in line


OPTICS_CASES = (
    [("px", v) for v in ("0.001", "0.01", "500", "1e5")]
    + [("kv", v) for v in ("0.3", "3e5", "1")]
    + [("cs", v) for v in ("2700", "-300")]
    + [("amp", v) for v in ("10", "-0.5", "1.5")]
)


@pytest.mark.parametrize("field, value", OPTICS_CASES)
def test_bad_optics_value(tmp_path, capsys, field, value):
    star = write_set(tmp_path / "data", **{field: value})
    out = tmp_path / "run"
    _refused(["reconstruct", star, "-o", out, *FAST], capsys, out, ("particles.star",))


ABERRATION_CASES = [
    ({"rlnOddZernike": "[0.1,0.2,0.3]"}, "rlnOddZernike"),
    ({"rlnOddZernike": "[0.1,0.2,0.3,0.4,0.5]"}, "rlnOddZernike"),
    ({"rlnEvenZernike": "[1,2]"}, "rlnEvenZernike"),
    ({"rlnEvenZernike": "[1,2,x,4]"}, "rlnEvenZernike"),
    ({"rlnOddZernike": "0.5"}, "rlnOddZernike"),
    (
        {"rlnMagMat00": "1", "rlnMagMat01": "2", "rlnMagMat10": "0.5", "rlnMagMat11": "1"},
        "rlnMagMat",
    ),
    ({"rlnMagMat00": "0", "rlnMagMat01": "0", "rlnMagMat10": "0", "rlnMagMat11": "0"}, "rlnMagMat"),
    (
        {"rlnMagMat00": "nan", "rlnMagMat01": "0", "rlnMagMat10": "0", "rlnMagMat11": "1"},
        "rlnMagMat",
    ),
]


@pytest.mark.parametrize("columns, name", ABERRATION_CASES)
def test_bad_aberration_columns(tmp_path, capsys, columns, name):
    """An aberration list of a length RELION never writes, a malformed list, a singular or
    non-finite magnification matrix: refused when the file is read."""
    from tests._tiny_set import HEADER

    names = "".join(f"_{c} #{8 + i}\n" for i, c in enumerate(columns))
    header = HEADER.replace(
        "_rlnImageSize #7\n1 opticsGroup1 {amp} {cs} {kv} {px} {box}",
        "_rlnImageSize #7\n"
        + names
        + "1 opticsGroup1 {amp} {cs} {kv} {px} {box} "
        + " ".join(columns.values()),
    )
    assert header != HEADER
    folder = tmp_path / "data"
    write_set(folder)
    star = folder / "particles.star"
    from tests._tiny_set import star_text

    star.write_text(star_text(rows(), header=header))
    out = tmp_path / "run"
    line = _refused(["reconstruct", star, "-o", out, *FAST], capsys, out, ("particles.star",))
    assert name in line


def test_ewald_refuses_premultiplied_particles(tmp_path, capsys):
    from tests._tiny_set import HEADER, star_text

    header = HEADER.replace(
        "_rlnImageSize #7\n1 opticsGroup1 {amp} {cs} {kv} {px} {box}",
        "_rlnImageSize #7\n_rlnCtfDataAreCtfPremultiplied #8\n"
        "1 opticsGroup1 {amp} {cs} {kv} {px} {box} 1",
    )
    folder = tmp_path / "data"
    star = write_set(folder)
    star.write_text(star_text(rows(), header=header))
    out = tmp_path / "run"
    argv = ["reconstruct", star, "-o", out, "--ewald", "--mask-diameter", "40", *FAST]
    line = _refused(argv, capsys, out, ("particles.star",))
    assert "premultiplied" in line
    # without --ewald the same set is accepted (premultiplied data are fine otherwise)
    code, _, err = run_main(["reconstruct", star, "-o", tmp_path / "ok", *FAST], capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    "option, name",
    [
        (["--ewald"], "--mask-diameter"),
        (["--ewald", "--mask-diameter", "-5"], "--mask-diameter"),
        (["--ewald", "--mask-diameter", "40", "--method", "cg"], "--ewald"),
        (["--ewald", "--mask-diameter", "40", "--no-ctf"], "--ewald"),
        (["--ewald", "--mask-diameter", "40", "--sectors", "1"], "--sectors"),
        (["--mask-diameter", "40"], "--ewald"),
    ],
)
def test_bad_ewald_options(tmp_path, capsys, option, name):
    star = write_set(tmp_path / "data")
    out = tmp_path / "run"
    _refused(["reconstruct", star, "-o", out, *option, *FAST], capsys, out, (name,))


@pytest.mark.parametrize(
    "option, name",
    [
        (["--mag-matrix", "1,1,1,1"], "--mag-matrix"),
        (["--odd-zernike", "1,2,3"], "--odd-zernike"),
        (["--even-zernike", "1,2"], "--even-zernike"),
        (["--beam-tilt", "1"], "--beam-tilt"),
        (["--group-angpix", "9,3"], "pixel size"),
    ],
)
def test_bad_simulate_optics(tmp_path, capsys, option, name):
    vol = write_volume(tmp_path / "vol.mrc")
    out = tmp_path / "out"
    _refused(["simulate", vol, "-n", "4", "-o", out, *option], capsys, out, (name,))


@pytest.mark.parametrize("n_dup", [1, 2, 5, 12])
def test_images_listed_in_both_halves(tmp_path, capsys, n_dup):
    r = rows()
    for k in range(n_dup):  # row of half 2 points at the image of a row of half 1
        r[2 * k + 1][0] = r[2 * k][0]
    star = write_set(tmp_path / "data", particle_rows=r)
    out = tmp_path / "run"
    line = _refused(["reconstruct", star, "-o", out, *FAST], capsys, out, ("particles.star",))
    assert f"{n_dup} images are listed in both half sets" in line


# -- pixels ------------------------------------------------------------------------------------

PIXEL_CASES = [(kind, k) for kind in ("nan", "inf", "-inf", "1e30", "-1e25") for k in (0, 9, 23)]


@pytest.mark.parametrize("kind, k", PIXEL_CASES)
def test_bad_pixel(tmp_path, capsys, kind, k):
    stack = images()
    stack[k, k % 16, 5] = float(kind)
    star = write_set(tmp_path / "data", stack=stack)
    out = tmp_path / "run"
    line = _refused(["reconstruct", star, "-o", out, *FAST], capsys, out, ("stack.mrcs",))
    assert f"image {k + 1} " in line


@pytest.mark.parametrize("value", [0.0, 1.0, -3.5])
@pytest.mark.parametrize("which", ["all", "one"])
def test_constant_images(tmp_path, capsys, value, which):
    stack = images()
    if which == "all":
        stack[:] = value
    else:
        stack[13] = value
    star = write_set(tmp_path / "data", stack=stack)
    out = tmp_path / "run"
    line = _refused(["reconstruct", star, "-o", out, *FAST], capsys, out, ("stack.mrcs",))
    assert "constant" in line


# -- MRC headers -------------------------------------------------------------------------------

HEADER_FIELDS = {  # word index (4 bytes) in the 1024-byte header, format
    "nx": (0, "<i"),
    "ny": (1, "<i"),
    "nz": (2, "<i"),
    "mode": (3, "<i"),
    "mapc": (16, "<i"),
    "mapr": (17, "<i"),
    "maps": (18, "<i"),
}
HEADER_CASES = [
    ("mode", 99),
    ("mode", -1),
    ("mode", 5),
    ("nx", -16),
    ("ny", 0),
    ("nz", -3),
    ("nz", 100000),
    ("mapc", 5),
    ("mapr", 0),
    ("maps", 1),
]


def _poke(path: Path, field: str, value: int) -> None:
    word, fmt = HEADER_FIELDS[field]
    raw = bytearray(path.read_bytes())
    raw[4 * word : 4 * word + 4] = struct.pack(fmt, value)
    path.write_bytes(bytes(raw))


def _commands(folder: Path, star: Path, vol: Path, good_vol: Path) -> dict[str, tuple]:
    out = folder / "out"
    return {
        "info": (["info", vol], None),
        "fsc": (["fsc", vol, good_vol, "--csv", out / "fsc.csv"], out),
        "project": (["project", vol, star, "-o", out / "p.mrcs"], out),
        "simulate": (["simulate", vol, "-n", "4", "-o", out], out),
    }


@pytest.mark.parametrize("field, value", HEADER_CASES)
@pytest.mark.parametrize("command", ["info", "fsc", "project", "simulate", "reconstruct"])
def test_corrupt_mrc_header(tmp_path, capsys, field, value, command):
    star = write_set(tmp_path / "data")
    good_vol = write_volume(tmp_path / "data" / "good.mrc")
    if command == "reconstruct":
        target = tmp_path / "data" / "stack.mrcs"
        argv, out = ["reconstruct", star, "-o", tmp_path / "run", *FAST], tmp_path / "run"
    else:
        target = write_volume(tmp_path / "data" / "vol.mrc")
        (tmp_path / "out").mkdir() if command in ("fsc", "project") else None
        argv, out = _commands(tmp_path, star, target, good_vol)[command]
    _poke(target, field, value)
    _refused(argv, capsys, None, (target.name,))
    if out is not None and command in ("simulate", "reconstruct"):
        assert leftovers(out) == []
    elif out is not None:
        assert list(out.iterdir()) == []


# -- options -----------------------------------------------------------------------------------

RECONSTRUCT_OPTIONS = [
    ["--tol", "-1"],
    ["--tol", "0"],
    ["--tol", "nan"],
    ["--max-iter", "0"],
    ["--epochs", "0"],
    ["--epochs", "-3"],
    ["--lr", "-1"],
    ["--lr", "0"],
    ["--pad", "0"],
    ["--pad", "-2"],
    ["--first", "1"],
    ["--maxres", "-3"],
    ["--angpix", "-1"],
    ["--angpix", "0"],
    ["--nproc", "0"],
    ["--batch-size", "0"],
    ["--val-fraction", "0.9"],
    ["--val-fraction", "0"],
    ["--sym", "X9"],
    ["--timeout", "0"],
    ["--huber-delta", "-1"],
    ["--patience", "-1"],
    ["--snr", "-1"],
    ["--lam", "-1"],
    ["--refine", "-1"],
    ["--sorted-l1-q", "2"],
]


@pytest.mark.parametrize("option", RECONSTRUCT_OPTIONS, ids=lambda o: " ".join(o))
@pytest.mark.parametrize("method", ["direct", "adam"])
def test_reconstruct_option_outside_its_domain(tmp_path, capsys, option, method):
    star = write_set(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["reconstruct", star, "-o", out, "--method", method, *option, *FAST]
    _refused(argv, capsys, out, (option[0], "sym", "X9"))


OTHER_OPTIONS = [
    ("simulate", ["-n", "0"], "-n"),
    ("simulate", ["--snr", "-1"], "--snr"),
    ("simulate", ["--defocus", "3:1"], "--defocus"),
    ("simulate", ["--defocus", "15000:20000"], "--defocus"),
    ("simulate", ["--shift-max", "-1"], "--shift-max"),
    ("simulate", ["--batch-size", "0"], "--batch-size"),
    ("project", ["--batch-size", "0"], "batch size"),
    ("fsc", ["--angpix", "-1"], "--angpix"),
]


@pytest.mark.parametrize("command, option, name", OTHER_OPTIONS)
def test_other_command_option_outside_its_domain(tmp_path, capsys, command, option, name):
    star = write_set(tmp_path / "data")
    vol = write_volume(tmp_path / "data" / "vol.mrc")
    out = tmp_path / "out"
    argv = {
        "simulate": ["simulate", vol, "-n", "4", "-o", out],
        "project": ["project", vol, star, "-o", tmp_path / "p.mrcs"],
        "fsc": ["fsc", vol, vol],
    }[command]
    argv = (
        [*argv, *option]
        if command != "simulate" or option[0] != "-n"
        else ["simulate", vol, "-n", "0", "-o", out]
    )
    _refused(argv, capsys, out, (name,))
    assert not (tmp_path / "p.mrcs").exists()


# -- hypothesis: STAR text and MRC header bytes ------------------------------------------------

_TOKENS = ["nan", "inf", "-1", "0", "abc", "@", "1e400", "data_", "loop_", "_rlnImageName", "\n"]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(_TOKENS), st.booleans()),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_star_keeps_the_promise(tmp_path_factory, capsys, edits):
    folder = tmp_path_factory.mktemp("hyp")
    star = write_set(folder)
    text = star.read_text()
    for pos, token, replace in edits:
        p = pos % (len(text) + 1)
        text = text[:p] + token + text[p + (len(token) if replace else 0) :]
    star.write_text(text)
    out = folder / "run"
    code, _, err = run_main(["reconstruct", star, "-o", out, "--refine", "0", *FAST], capsys)
    assert code in (0, 2), err
    if code == 2:
        assert_one_error_line(err)
        assert leftovers(out) == []
    else:
        assert (out / "run.json").is_file() and (out / "map.mrc").is_file()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    word=st.sampled_from([0, 1, 2, 3, 16, 17, 18, 23, 52, 53]),
    value=st.integers(-(2**31), 2**31 - 1),
)
def test_mutated_mrc_header_keeps_the_promise(tmp_path_factory, capsys, word, value):
    folder = tmp_path_factory.mktemp("hypmrc")
    vol = write_volume(folder / "vol.mrc")
    raw = bytearray(vol.read_bytes())
    raw[4 * word : 4 * word + 4] = struct.pack("<i", value)
    vol.write_bytes(bytes(raw))
    code, _, err = run_main(["info", vol], capsys)
    assert code in (0, 2), err
    if code == 2:
        assert_one_error_line(err, ("vol.mrc",))
    out = folder / "out"
    out.mkdir()
    code, _, err = run_main(["fsc", vol, vol, "--csv", out / "f.csv"], capsys)
    assert code in (0, 2), err
    if code == 2:
        assert_one_error_line(err, ("vol.mrc",))
        assert list(out.iterdir()) == []


def test_compiled_image_stats_equal_numpy(monkeypatch) -> None:
    """The compiled per-image statistics equal NumPy's (finite, max |pixel|, float64 std), for
    ordinary, constant, NaN and infinite images, on one and on two threads."""
    import torch

    from cryograd import checks

    if checks._stats_function() is None:
        pytest.skip("the compiled extension is not built")
    rng = np.random.default_rng(3)
    images = (rng.standard_normal((7, 33 * 33)) * 5 + 2).astype(np.float32)
    images[1] = 0.25  # constant: std exactly 0
    images[2, 10] = np.nan
    images[3, 0] = -np.inf
    ok = np.isfinite(images).all(axis=1)
    clean = np.where(ok[:, None], images, 0.0)
    expected_std = clean.astype(np.float64).std(axis=1)
    expected_max = np.where(ok, np.abs(clean).max(axis=1), np.inf)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got_ok, got_max, got_std = checks._block_stats(images)
            assert (got_ok == ok).all()
            assert (got_max == expected_max).all()
            assert got_std[1] == 0.0
            np.testing.assert_allclose(got_std, expected_std, rtol=1e-12, atol=0)
    finally:
        torch.set_num_threads(before)
