"""cryoDRGN pose and CTF ``.pkl`` files, both ways.

* Pose file: a pickled tuple ``(rot (n, 3, 3), trans (n, 2))`` (or ``rot`` alone). ``rot`` is
  RELION's ``A`` itself (checked against cryoDRGN's parse of a RELION STAR and of a cryoSPARC
  file, see the tests); ``trans`` is the RELION origin in pixels divided by the box size, with
  RELION's sign.
* CTF file: a float32 ``(n, 9)`` array with columns ``D, Apix, dfU (Å), dfV (Å), dfang (deg), kV,
  Cs (mm), w (amplitude contrast), phase_shift (deg)``.

Reading unpickles only numpy arrays and tuples (a restricted unpickler); anything else is refused.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from cryograd.errors import CryogradError
from cryograd.io.mrc import temporary_path
from cryograd.particle_set import OpticsGroup, ParticleSet

__all__ = ["read_drgn_poses", "read_drgn_ctf", "read_drgn", "write_drgn"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "tuple"),
}


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _load_pickle(path: Path):
    if not path.is_file():
        raise CryogradError(f"{path}: file not found")
    try:
        with open(path, "rb") as fh:
            return _NumpyUnpickler(io.BufferedReader(fh)).load()
    except Exception as exc:  # noqa: BLE001
        raise CryogradError(f"{path}: not a cryoDRGN pickle of numpy arrays ({exc})") from None


def _finite(path: Path, a: np.ndarray, what: str) -> np.ndarray:
    flat = a.reshape(len(a), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise CryogradError(f"{path}: row {int(np.argmax(bad)) + 1} of {what} is not finite")
    return a


def read_drgn_poses(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a cryoDRGN pose pkl.

    Returns
    -------
    rotations
        ``(n, 3, 3)`` float64, RELION ``A``.
    trans
        ``(n, 2)`` float64 origins as fractions of the box (RELION sign), or None.
    """
    path = Path(path)
    obj = _load_pickle(path)
    if isinstance(obj, tuple) and len(obj) in (1, 2):
        rot = obj[0]
        trans = obj[1] if len(obj) == 2 else None
    else:
        rot, trans = obj, None
    try:
        rot = np.asarray(rot, dtype=np.float64)
        trans = None if trans is None else np.asarray(trans, dtype=np.float64)
    except (TypeError, ValueError):
        raise CryogradError(f"{path}: pose arrays are not numeric") from None
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise CryogradError(f"{path}: rotations have shape {rot.shape}, expected (n, 3, 3)")
    if trans is not None and trans.shape != (len(rot), 2):
        raise CryogradError(
            f"{path}: translations have shape {trans.shape}, expected ({len(rot)}, 2)"
        )
    _finite(path, rot, "rotations")
    if trans is not None:
        _finite(path, trans, "translations")
    return rot, trans


def read_drgn_ctf(path: str | os.PathLike) -> np.ndarray:
    """Read a cryoDRGN CTF pkl: float64 ``(n, 9)`` (D, Apix, dfU, dfV, dfang, kV, Cs, w, phase)."""
    path = Path(path)
    obj = _load_pickle(path)
    try:
        ctf = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError):
        raise CryogradError(f"{path}: CTF array is not numeric") from None
    if ctf.ndim != 2 or ctf.shape[1] != 9:
        raise CryogradError(f"{path}: CTF array has shape {ctf.shape}, expected (n, 9)")
    return _finite(path, ctf, "the CTF table")


def read_drgn(
    poses_path: str | os.PathLike,
    ctf_path: str | os.PathLike,
    *,
    image_stack: str | os.PathLike | None = None,
    angpix: float | None = None,
) -> ParticleSet:
    """A :class:`ParticleSet` from cryoDRGN pose and CTF pkl files (box, pixel size from the CTF).

    Parameters
    ----------
    poses_path, ctf_path
        The two pkl files (same number of particles).
    image_stack
        Optional ``.mrcs`` whose images 1..n are the particles.
    angpix
        Pixel size in Å overriding the CTF file's ``Apix`` column.
    """
    poses_path, ctf_path = Path(poses_path), Path(ctf_path)
    rot, trans = read_drgn_poses(poses_path)
    table = read_drgn_ctf(ctf_path)
    n = len(rot)
    if len(table) != n:
        raise CryogradError(f"{ctf_path}: has {len(table)} particles but {poses_path} has {n}")
    boxes = np.unique(table[:, 0])
    pixels = np.unique(table[:, 1])
    if len(boxes) != 1 or boxes[0] <= 0 or boxes[0] != int(boxes[0]):
        raise CryogradError(f"{ctf_path}: column D (box size) must be one positive integer")
    if angpix is None and (len(pixels) != 1 or not pixels[0] > 0):
        raise CryogradError(f"{ctf_path}: column Apix must be one positive value")
    box = int(boxes[0])
    pixel = float(pixels[0]) if angpix is None else float(angpix)
    ctf = np.stack(
        [
            table[:, 2],
            table[:, 3],
            table[:, 4],
            table[:, 5],
            table[:, 6],
            table[:, 7],
            table[:, 8],
            np.zeros(n),
            np.ones(n),
        ],
        axis=1,
    )
    stack_files: list[Path] = []
    stack_ids = stack_indices = None
    if image_stack is not None:
        stack_files = [Path(image_stack)]
        stack_ids = np.zeros(n, dtype=np.int32)
        stack_indices = np.arange(n, dtype=np.int64)
    return ParticleSet(
        path=poses_path,
        box_size=box,
        pixel_size_angstrom=pixel,
        rotations=rot,
        shifts_px=None if trans is None else trans * box,
        ctf=ctf,
        ctf_premultiplied=np.zeros(n, dtype=bool),
        optics_group=np.ones(n, dtype=np.int64),
        optics_groups=[OpticsGroup(1, "opticsGroup1", pixel, box)],
        stack_files=stack_files,
        stack_ids=stack_ids,
        stack_indices=stack_indices,
        source_format="cryoDRGN pkl",
    )


def _atomic_pickle(path: Path, obj) -> Path:
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as fh:
            pickle.dump(obj, fh, protocol=4)
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_drgn(
    poses_path: str | os.PathLike | None,
    ctf_path: str | os.PathLike | None,
    particles: ParticleSet,
) -> None:
    """Write cryoDRGN pose and/or CTF pkl files (renamed into place only when all are written).

    Raises
    ------
    CryogradError
        When the set lacks what a file needs (poses, CTF, box size).
    """
    n = len(particles)
    src = particles.path
    if particles.box_size is None:
        raise CryogradError(f"{src}: box size unknown (no rlnImageSize, no images); give --box")
    box = int(particles.box_size)
    objects: list[tuple[Path, object]] = []
    if poses_path is not None:
        if particles.rotations is None:
            raise CryogradError(f"{src}: has no poses; cannot write a cryoDRGN pose file")
        shifts = particles.shifts_px if particles.shifts_px is not None else np.zeros((n, 2))
        objects.append(
            (Path(poses_path), (np.asarray(particles.rotations, np.float64), shifts / box))
        )
    if ctf_path is not None:
        if particles.ctf is None:
            raise CryogradError(f"{src}: has no CTF parameters; cannot write a cryoDRGN CTF file")
        c = particles.ctf
        table = np.stack(
            [
                np.full(n, box),
                particles.pixel_sizes_angstrom,
                c[:, 0],
                c[:, 1],
                c[:, 2],
                c[:, 3],
                c[:, 4],
                c[:, 5],
                c[:, 6],
            ],
            axis=1,
        ).astype(np.float32)
        objects.append((Path(ctf_path), table))
    temps: list[tuple[Path, Path]] = []
    try:
        for dest, obj in objects:
            temps.append((_atomic_pickle(dest, obj), dest))
        for tmp, dest in temps:
            os.replace(tmp, dest)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
