"""A tiny valid particle set (STAR + one .mrcs) to mutate, and the promise of a refused input."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from cryograd.io.mrc import write_map, write_stack

BOX = 16
N = 24
PIXEL = 3.0

HEADER = """
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
1 opticsGroup1 {amp} {cs} {kv} {px} {box}

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
_rlnCtfScalefactor #12
"""

DEFAULTS = {"amp": 0.1, "cs": 2.7, "kv": 300.0, "px": PIXEL, "box": BOX}


def rows(n: int = N, seed: int = 0) -> list[list[str]]:
    """The particle rows as lists of fields (to mutate)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rot, tilt, psi = rng.uniform(-180, 180), rng.uniform(0, 180), rng.uniform(-180, 180)
        df = rng.uniform(10000, 25000)
        out.append(
            [
                f"{i + 1:06d}@stack.mrcs",
                f"{rot:.3f}",
                f"{tilt:.3f}",
                f"{psi:.3f}",
                "0.0",
                "0.0",
                f"{df:.1f}",
                f"{df - 300:.1f}",
                "30.0",
                "1",
                str(i % 2 + 1),
                "1.0",
            ]
        )
    return out


def star_text(particle_rows: list[list[str]], header: str = HEADER, **optics) -> str:
    values = {**DEFAULTS, **optics}
    return header.format(**values) + "\n".join(" ".join(r) for r in particle_rows) + "\n"


def images(n: int = N, seed: int = 0) -> np.ndarray:
    """``(n, BOX, BOX)`` noise images with a blob (float32)."""
    rng = np.random.default_rng(seed + 1)
    y, x = np.mgrid[:BOX, :BOX] - BOX // 2
    blob = np.exp(-(x**2 + y**2) / 8.0)
    return (blob[None] + 0.5 * rng.standard_normal((n, BOX, BOX))).astype(np.float32)


def write_set(
    folder: Path, *, particle_rows=None, stack: np.ndarray | None = None, **optics
) -> Path:
    """Write ``particles.star`` and ``stack.mrcs`` into ``folder``; returns the STAR path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_stack(folder / "stack.mrcs", images() if stack is None else stack, PIXEL)
    star = folder / "particles.star"
    star.write_text(star_text(rows() if particle_rows is None else particle_rows, **optics))
    return star


def write_volume(path: Path, seed: int = 0) -> Path:
    """A ``BOX``³ map with the set's voxel size."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:BOX, :BOX, :BOX] - BOX // 2
    vol = np.exp(-(x**2 + y**2 + z**2) / 10.0) + 0.01 * rng.standard_normal((BOX,) * 3)
    return write_map(path, vol.astype(np.float32), PIXEL)


def leftovers(out: Path) -> list[str]:
    """What a refused run left: the output folder, or hidden files/folders beside it."""
    parent = out.parent
    left = [p.name for p in parent.iterdir() if p.name == out.name]
    left += [p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return left


def assert_one_error_line(err: str, names: tuple[str, ...] = ()) -> str:
    """Exactly one ``cryograd: error:`` line, no traceback and no usage text; it names one of
    ``names`` (a file or an option) when given. Returns the line."""
    lines = [ln for ln in err.splitlines() if ln.startswith("cryograd: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "usage:" not in err, err
    if names:
        assert any(n in lines[0] for n in names), (names, lines[0])
    return lines[0]


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """``cryograd.cli.main.main(argv)`` with captured output."""
    from cryograd.cli.main import main

    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def env_here() -> dict[str, str]:
    """The environment of a subprocess that imports this tree."""
    src = str(Path(__file__).resolve().parent.parent / "src")
    path = os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=f"{src}:{path}" if path else src, OMP_NUM_THREADS="1")


PY = sys.executable
