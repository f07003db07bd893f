"""Property-based: malformed STAR, .cs and MRC input only ever raises CryogradError (one line)."""

from __future__ import annotations

import itertools

import mrcfile
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryograd.errors import CryogradError
from cryograd.io.mrc import read_map, read_map_header
from cryograd.io.registry import read_particles

_COUNTER = itertools.count()

VALID_STAR = b"""
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnAmplitudeContrast #3
_rlnSphericalAberration #4
_rlnVoltage #5
_rlnImagePixelSize #6
_rlnImageSize #7
1 opticsGroup1 0.1 2.7 300.0 1.5 32
2 opticsGroup2 0.1 2.7 200.0 1.5 32

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOriginXAngst #5
_rlnOriginYAngst #6
_rlnDefocusU #7
_rlnDefocusV #8
_rlnDefocusAngle #9
_rlnOpticsGroup #10
_rlnRandomSubset #11
000001@stack.mrcs 10.0 20.0 30.0 1.5 -1.5 15000 14000 45 1 1
000002@stack.mrcs 11.0 21.0 31.0 0.0 3.0 16000 15000 40 2 2
000003@stack.mrcs 12.0 22.0 32.0 -3.0 0.0 17000 16000 35 1 1
"""

_TOKENS = [
    b"nan",
    b"inf",
    b"-1",
    b"0",
    b"abc",
    b"@",
    b"data_",
    b"loop_",
    b"_rlnImageName",
    b"_rlnOpticsGroup",
    b"\n",
    b" ",
    b"\t",
    b"[1,2",
    b"'",
    b'"',
    b"#",
    b"999999@x.mrcs",
    b"1e400",
    b"\x00",
    b"\xff\xfe",
    b"data_optics",
    b"_rlnImageSize",
]


def _mrc_bytes() -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.mrc"
        with mrcfile.new(p) as mrc:
            mrc.set_data(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
            mrc.voxel_size = 2.0
        return p.read_bytes()


VALID_MRC = _mrc_bytes()


@st.composite
def mutated(draw, base: bytes, tokens: list[bytes]):
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "byte"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "insert":
            data[pos:pos] = draw(st.sampled_from(tokens))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 40))]
        elif kind == "replace":
            tok = draw(st.sampled_from(tokens))
            data[pos : pos + len(tok)] = tok
        elif kind == "truncate":
            del data[pos:]
        else:
            if data:
                data[pos % len(data)] = draw(st.integers(0, 255))
    return bytes(data)


def _check_message(exc: CryogradError, path) -> None:
    message = str(exc)
    assert "\n" not in message
    assert str(path) in message or path.name in message


def _write(tmp_path, suffix: str, data: bytes):
    path = tmp_path / f"f{next(_COUNTER)}{suffix}"
    path.write_bytes(data)
    return path


_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(data=st.one_of(mutated(VALID_STAR, _TOKENS), st.binary(max_size=400)))
def test_malformed_star_only_raises_cryograd_error(tmp_path, data):
    path = _write(tmp_path, ".star", data)
    try:
        ps = read_particles(path)
    except CryogradError as exc:
        _check_message(exc, path)
        return
    # what reads must be usable metadata
    assert len(ps) > 0
    assert np.all(np.isfinite(ps.pixel_sizes_angstrom))
    if ps.rotations is not None:
        assert np.all(np.isfinite(ps.rotations))
    if ps.ctf is not None:
        assert np.all(np.isfinite(ps.ctf))
    try:
        ps.summary()
    except CryogradError as exc:
        assert "\n" not in str(exc)


@_SETTINGS
@given(
    data=st.one_of(
        mutated(VALID_MRC[:1200], [b"\x00" * 4, b"\xff" * 4, b"MAP ", b"\x7f\x7f"]),
        st.binary(max_size=1500),
    )
)
def test_malformed_mrc_only_raises_cryograd_error(tmp_path, data):
    # mutate the header region mostly, keep (part of) the data after it
    blob = data + VALID_MRC[1200:] if len(data) >= 1024 else data
    path = _write(tmp_path, ".mrc", blob)
    for reader in (read_map, read_map_header):
        try:
            reader(path)
        except CryogradError as exc:
            _check_message(exc, path)


@_SETTINGS
@given(data=st.binary(max_size=600))
def test_malformed_cs_only_raises_cryograd_error(tmp_path, data):
    path = _write(tmp_path, ".cs", data)
    try:
        read_particles(path)
    except CryogradError as exc:
        _check_message(exc, path)
