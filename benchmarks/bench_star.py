"""Time and peak memory of opening a large RELION 3.1 STAR file: ``starfile`` vs cryograd.

Writes a synthetic RELION 3.1 particle file (one optics group; image name, micrograph name,
coordinates, Euler angles, origins in Å, CTF and the usual bookkeeping columns: 22 columns) with
``--rows`` particles, then opens it in a fresh interpreter per reader and run:

* ``starfile``: ``starfile.read(path, always_dict=True)`` (tables only);
* ``cryograd parser``: ``cryograd.io.star_parser.read_star_file`` (the same tables);
* ``cryograd read_particles``: the whole :func:`cryograd.io.registry.read_particles` (tables,
  RELION conventions, rotation matrices, image-name parsing).

Prints a table of rows, wall and CPU seconds (user + system, all threads), peak resident memory
(MB, the child's ``ru_maxrss``, which includes the interpreter and the imports) and file size.
On a shared machine the CPU time is the steadier number. Usage::

    python benchmarks/bench_star.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_OPTICS = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnMicrographOriginalPixelSize #3
_rlnVoltage #4
_rlnSphericalAberration #5
_rlnAmplitudeContrast #6
_rlnImagePixelSize #7
_rlnImageSize #8
_rlnImageDimensionality #9
_rlnCtfDataAreCtfPremultiplied #10
opticsGroup1 1 0.885000 300.000000 2.700000 0.100000 1.062000 256 2 0


# version 30001

data_particles

"""

_COLUMNS = [
    "rlnCoordinateX",
    "rlnCoordinateY",
    "rlnAutopickFigureOfMerit",
    "rlnClassNumber",
    "rlnAnglePsi",
    "rlnImageName",
    "rlnMicrographName",
    "rlnOpticsGroup",
    "rlnCtfMaxResolution",
    "rlnCtfFigureOfMerit",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnCtfBfactor",
    "rlnCtfScalefactor",
    "rlnPhaseShift",
    "rlnGroupNumber",
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "rlnRandomSubset",
]


def write_star(path: Path, rows: int, chunk: int = 100_000, padded: bool = True) -> None:
    """A RELION 3.1 particle file of ``rows`` particles, a chunk at a time.

    ``padded``: numbers right-aligned in 12 characters as RELION writes them; else one space
    between values, as ``cryograd convert`` / ``write_star`` write them.
    """
    width = 12 if padded else 0
    rng = np.random.default_rng(0)
    with open(path, "w") as fh:
        fh.write(_OPTICS)
        fh.write("loop_\n" + "".join(f"_{c} #{i + 1}\n" for i, c in enumerate(_COLUMNS)))
        for start in range(0, rows, chunk):
            m = min(chunk, rows - start)
            i = np.arange(start, start + m)
            mic = i // 200
            # RELION writes numbers right-aligned in 12 characters (``%12.6f``, ``%12d``)
            f = lambda a: np.char.rjust(np.char.mod("%.6f", a), width)  # noqa: E731
            d = lambda a: np.char.rjust(np.char.mod("%d", a), width)  # noqa: E731
            cols = [
                f(rng.uniform(0, 4000, m)),
                f(rng.uniform(0, 4000, m)),
                f(rng.uniform(0, 1, m)),
                d(rng.integers(1, 4, m)),
                f(rng.uniform(-180, 180, m)),
                np.char.add(
                    np.char.mod("%06d", i % 200 + 1),
                    np.char.mod("@Extract/job012/Movies/mic_%05d.mrcs", mic),
                ),
                np.char.mod("MotionCorr/job002/Movies/mic_%05d.mrc", mic),
                d(np.ones(m, dtype=np.int64)),
                f(rng.uniform(3, 8, m)),
                f(rng.uniform(0, 0.3, m)),
                f(rng.uniform(8000, 25000, m)),
                f(rng.uniform(8000, 25000, m)),
                f(rng.uniform(-180, 180, m)),
                f(np.zeros(m)),
                f(np.ones(m)),
                f(np.zeros(m)),
                d(mic % 50 + 1),
                f(rng.uniform(-180, 180, m)),
                f(rng.uniform(0, 180, m)),
                f(rng.uniform(-10, 10, m)),
                f(rng.uniform(-10, 10, m)),
                d(i % 2 + 1),
            ]
            fh.write("\n".join(" ".join(r) for r in zip(*[c.tolist() for c in cols])) + "\n")


_READERS = {
    "starfile": "import starfile; starfile.read(PATH, always_dict=True)",
    "cryograd parser": ("from cryograd.io.star_parser import read_star_file; read_star_file(PATH)"),
    "cryograd read_particles": (
        "from cryograd.io.registry import read_particles; read_particles(PATH)"
    ),
}

_CHILD = """
import resource, sys, time
PATH = sys.argv[1]
{imports}
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t, c = time.perf_counter(), cpu()
{call}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
try:  # VmHWM is this process's own peak (ru_maxrss keeps the parent's across exec)
    with open("/proc/self/status") as fh:
        peak = next(int(x.split()[1]) for x in fh if x.startswith("VmHWM")) / 1024
except (OSError, StopIteration):
    pass
print(time.perf_counter() - t, cpu() - c, peak)
"""


def measure(reader: str, path: Path) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one reader in a fresh interpreter (imports not timed)."""
    imports, call = _READERS[reader].split("; ", 1)
    code = _CHILD.format(imports=imports, call=call)
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    wall, cpu, peak = out.stdout.split()[-3:]
    return float(wall), float(cpu), float(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeats", type=int, default=1, help="runs per reader (best kept)")
    parser.add_argument("--readers", nargs="+", default=list(_READERS), choices=list(_READERS))
    parser.add_argument(
        "--single-space",
        action="store_true",
        help="one space between values (cryograd's own files) instead of RELION's padding",
    )
    args = parser.parse_args()
    print(f"{'rows':>9} {'reader':<24} {'wall s':>7} {'CPU s':>7} {'peak MB':>8} {'file MB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"particles_{rows}.star"
            t = time.perf_counter()
            write_star(path, rows, padded=not args.single_space)
            size = os.path.getsize(path) / 1e6
            print(f"# wrote {path.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for reader in args.readers:
                runs = [measure(reader, path) for _ in range(args.repeats)]
                wall, cpu, peak = (min(r[k] for r in runs) for k in range(3))
                print(f"{rows:>9} {reader:<24} {wall:>7.2f} {cpu:>7.2f} {peak:>8.0f} {size:>8.0f}")


if __name__ == "__main__":
    main()
