"""File formats by extension: ``READERS``, ``WRITERS`` and :func:`read_particles`.

A format is one entry: its reader (and its one-file summary, for ``cryograd info``) in
``READERS`` and, for particle metadata, its writer in ``WRITERS``, keyed by the lower-case file
extension. ``cryograd info`` and ``cryograd convert`` choose through these tables, so adding a
format is one module in ``cryograd/io`` and one ``register_reader`` / ``register_writer`` call at
the end of this file.

A file whose extension no reader claims is read as a RELION STAR file (RELION does not insist on
``.star``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryograd.errors import CryogradError
from cryograd.io.cryosparc import read_cs
from cryograd.io.drgn import write_drgn
from cryograd.io.mrc import read_map, read_map_header
from cryograd.io.star import read_star, write_star
from cryograd.particle_set import ParticleSet

__all__ = [
    "READERS",
    "WRITERS",
    "ReadOptions",
    "Reader",
    "WriteOptions",
    "Writer",
    "map_summary",
    "read_particles",
    "reader_for",
    "register_reader",
    "register_writer",
    "writer_for",
]


@dataclass(frozen=True)
class ReadOptions:
    """What a reader may need besides the file.

    Attributes
    ----------
    datadir
        Folder the image paths are relative to (default: the metadata file's folder).
    angpix
        Pixel size in Å overriding the file's.
    box_size
        Box size in pixels when the file does not state it and no image is at hand.
    """

    datadir: Path | None = None
    angpix: float | None = None
    box_size: int | None = None


@dataclass(frozen=True)
class WriteOptions:
    """What a writer may need besides the file and the set.

    Attributes
    ----------
    ctf_path
        cryoDRGN: where the CTF pkl goes (default: the pose file with ``_ctf`` before ``.pkl``).
    """

    ctf_path: Path | None = None


@dataclass(frozen=True)
class Reader:
    """How to read one format.

    Attributes
    ----------
    name
        The format, in words.
    kind
        ``"particles"`` (``read`` gives a :class:`ParticleSet`) or ``"map"`` (an MRC map/stack).
    read
        ``read(path, options)``: the file's content, or None when the file alone cannot be read
        (``refusal`` then says why).
    summarise
        ``summarise(path, options)``: a JSON-ready summary (``cryograd info``).
    refusal
        The error when ``read`` is None.
    """

    name: str
    kind: str
    read: Callable[[Path, ReadOptions], object] | None
    summarise: Callable[[Path, ReadOptions], dict]
    refusal: str = ""


@dataclass(frozen=True)
class Writer:
    """How to write particle metadata in one format.

    Attributes
    ----------
    name
        The format, in words.
    write
        ``write(path, particles, options)``; returns the files written.
    """

    name: str
    write: Callable[[Path, ParticleSet, WriteOptions], list[Path]]


READERS: dict[str, Reader] = {}
WRITERS: dict[str, Writer] = {}


def register_reader(suffixes: tuple[str, ...], reader: Reader) -> None:
    """Make ``reader`` read files ending in any of ``suffixes`` (lower case, with the dot)."""
    for suffix in suffixes:
        READERS[suffix.lower()] = reader


def register_writer(suffixes: tuple[str, ...], writer: Writer) -> None:
    """Make ``writer`` write files ending in any of ``suffixes`` (lower case, with the dot)."""
    for suffix in suffixes:
        WRITERS[suffix.lower()] = writer


def reader_for(path: Path) -> Reader:
    """The reader of ``path`` by its extension (STAR when no reader claims it)."""
    return READERS.get(Path(path).suffix.lower(), READERS[".star"])


def writer_for(path: Path) -> Writer | None:
    """The writer of ``path`` by its extension, or None."""
    return WRITERS.get(Path(path).suffix.lower())


def read_particles(
    path: str | os.PathLike,
    *,
    datadir: str | os.PathLike | None = None,
    angpix: float | None = None,
    box_size: int | None = None,
) -> ParticleSet:
    """Read particle metadata: RELION STAR (3.0–5.0), cryoSPARC ``.cs`` (by ``READERS``).

    Parameters
    ----------
    path
        ``.star`` (or any extension no other reader claims), ``.cs``. A cryoDRGN pose ``.pkl``
        needs its CTF pkl too: use :func:`cryograd.io.drgn.read_drgn`.
    datadir
        Folder the image paths are relative to (default: the metadata file's folder).
    angpix
        Pixel size in Å; overrides the file's (needed for RELION 3.0 files without
        ``rlnDetectorPixelSize``/``rlnMagnification``).
    box_size
        Box size in pixels when the file does not state it and no image is at hand.

    Raises
    ------
    CryogradError
        Missing or malformed file, no particle table, unknown pixel size, NaN/inf metadata, ...
    """
    path = Path(path)
    options = _check(path, datadir, angpix, box_size)
    reader = reader_for(path)
    if reader.kind != "particles":
        raise CryogradError(f"{path}: is an {reader.name}, not a particle file")
    if reader.read is None:
        raise CryogradError(f"{path}: {reader.refusal}")
    particles = reader.read(path, options)
    assert isinstance(particles, ParticleSet)
    return particles


def summarise(
    path: str | os.PathLike,
    *,
    datadir: str | os.PathLike | None = None,
    angpix: float | None = None,
) -> dict:
    """The JSON-ready summary of any file a reader claims (``cryograd info``)."""
    path = Path(path)
    options = _check(path, datadir, angpix, None)
    return reader_for(path).summarise(path, options)


def _check(
    path: Path, datadir: str | os.PathLike | None, angpix: float | None, box_size: int | None
) -> ReadOptions:
    if not path.exists():
        raise CryogradError(f"{path}: file not found")
    if path.is_dir():
        raise CryogradError(f"{path}: is a folder, not a particle file")
    if angpix is not None and not (np.isfinite(angpix) and angpix > 0):
        raise CryogradError(f"{path}: --angpix must be a positive number, got {angpix}")
    return ReadOptions(None if datadir is None else Path(datadir), angpix, box_size)


# ---------------------------------------------------------------------- the formats
def map_summary(path: Path, options: ReadOptions | None = None) -> dict:
    """Header summary of an MRC map or stack (no data read)."""
    h = read_map_header(path)
    return {
        "file": str(path),
        "format": "MRC stack" if h.is_stack else "MRC map",
        "shape": list(h.shape),
        "voxel_size_angstrom": h.voxel_size_angstrom,
        "voxel_size_xyz_angstrom": list(h.voxel_size_xyz_angstrom),
        "origin_angstrom": list(h.origin_angstrom),
        "start_voxels": list(h.start_voxels),
        "mode": h.mode,
        "header_permissive": h.permissive,
    }


def _read_star(path: Path, options: ReadOptions) -> ParticleSet:
    return read_star(
        path, datadir=options.datadir, angpix=options.angpix, box_size=options.box_size
    )


def _read_cs(path: Path, options: ReadOptions) -> ParticleSet:
    return read_cs(path, datadir=options.datadir, angpix=options.angpix)


def _particle_summary(read: Callable[[Path, ReadOptions], ParticleSet]):
    def summary(path: Path, options: ReadOptions) -> dict:
        return read(path, options).summary()

    return summary


_DRGN_REFUSAL = (
    "a cryoDRGN pose file needs its CTF file too "
    "(cryograd convert --poses POSES.pkl --ctf CTF.pkl OUT.star)"
)


def _refuse_drgn(path: Path, options: ReadOptions) -> dict:
    raise CryogradError(f"{path}: {_DRGN_REFUSAL}")


def _write_star(path: Path, particles: ParticleSet, options: WriteOptions) -> list[Path]:
    return [write_star(path, particles)]


def _write_drgn(path: Path, particles: ParticleSet, options: WriteOptions) -> list[Path]:
    """Pose pkl at ``path``, and the CTF pkl (``options.ctf_path``) when the set has a CTF."""
    if particles.rotations is None:
        raise CryogradError(f"{particles.path}: has no poses; cannot write a cryoDRGN pose file")
    ctf_path = options.ctf_path or path.with_name(path.stem + "_ctf.pkl")
    ctf_out = ctf_path if particles.has_ctf else None
    write_drgn(path, ctf_out, particles)
    return [path] if ctf_out is None else [path, ctf_out]


register_reader(
    (".star",), Reader("RELION STAR file", "particles", _read_star, _particle_summary(_read_star))
)
register_reader(
    (".cs",), Reader("cryoSPARC .cs file", "particles", _read_cs, _particle_summary(_read_cs))
)
register_reader(
    (".pkl",), Reader("cryoDRGN pose file", "particles", None, _refuse_drgn, _DRGN_REFUSAL)
)
register_reader(
    (".mrc", ".mrcs", ".map", ".ccp4", ".st", ".gz", ".bz2"),
    Reader("MRC map or stack", "map", lambda path, options: read_map(path), map_summary),
)
register_writer((".star",), Writer("RELION 3.1 STAR", _write_star))
register_writer((".pkl",), Writer("cryoDRGN pose and CTF pkl", _write_drgn))
