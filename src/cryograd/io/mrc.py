"""MRC maps and image stacks: read with voxel size and origin, write float32 atomically.

Reading goes through ``mrcfile``. A file whose header is merely odd (no ``MAP`` id, unknown
machine stamp, as in files written by some older tools) is read again in ``mrcfile``'s permissive
mode; a file that is truncated, corrupt or not MRC at all raises
:class:`~cryograd.errors.CryogradError` naming it.

Writing is atomic: data go to a temporary name in the destination folder, which is renamed over the
destination only when complete, and deleted when anything fails.
"""

from __future__ import annotations

import errno
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import mrcfile
import numpy as np

from cryograd.errors import CryogradError

__all__ = [
    "MapData",
    "MapHeader",
    "read_map",
    "read_map_header",
    "open_stack",
    "write_map",
    "write_stack",
    "StackWriter",
    "temporary_path",
]

logger = logging.getLogger(__name__)


@dataclass
class MapHeader:
    """What an MRC header says, without reading the data.

    Attributes
    ----------
    path
        The file.
    shape
        Data shape as ``mrcfile`` gives it: ``(z, y, x)`` for volumes and stacks, ``(y, x)``
        for single images.
    voxel_size_angstrom
        Voxel size along x in Å (0.0 when the header does not set one).
    voxel_size_xyz_angstrom
        ``(x, y, z)`` voxel sizes in Å (they differ for anisotropic maps).
    origin_angstrom
        ``(x, y, z)`` origin in Å: the header's origin field, or ``nxstart · voxel`` when that
        is zero.
    start_voxels
        ``(nxstart, nystart, nzstart)``.
    is_stack
        True when the file ends ``.mrcs``, or the header marks an image stack (``ispg = 0``,
        ``nz > 1``) and the data are not a cube (old tools write ``ispg = 0`` for volumes too).
    mode
        MRC data mode.
    permissive
        True when the header was only readable in permissive mode.
    """

    path: Path
    shape: tuple[int, ...]
    voxel_size_angstrom: float
    voxel_size_xyz_angstrom: tuple[float, float, float]
    origin_angstrom: tuple[float, float, float]
    start_voxels: tuple[int, int, int]
    is_stack: bool
    mode: int
    permissive: bool


@dataclass
class MapData:
    """A map in memory.

    Attributes
    ----------
    data
        float32 array, ``(z, y, x)`` for volumes (``(y, x)`` for a single image).
    voxel_size_angstrom
        Voxel size along x in Å (0.0 when the header does not set one).
    origin_angstrom
        ``(x, y, z)`` in Å.
    header
        The :class:`MapHeader`.
    """

    data: np.ndarray
    voxel_size_angstrom: float
    origin_angstrom: tuple[float, float, float]
    header: MapHeader


def _open(path: Path, *, mmap: bool, header_only: bool = False):
    """Open with mrcfile, strict first, permissive second; returns (mrc, permissive)."""
    if not path.exists():
        raise CryogradError(f"{path}: file not found")
    if path.is_dir():
        raise CryogradError(f"{path}: is a folder, not an MRC file")
    kwargs = {"mode": "r"} if mmap else {"mode": "r", "header_only": header_only}
    opener = mrcfile.mmap if mmap else mrcfile.open
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = opener(str(path), **kwargs)
        _check_header(path, mrc)
        return mrc, False
    except CryogradError:
        raise
    except Exception as strict_exc:  # noqa: BLE001 - any parse failure means: try permissive
        text = str(strict_exc).strip()
        strict_msg = text.splitlines()[0] if text else type(strict_exc).__name__
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mrc = opener(str(path), permissive=True, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise CryogradError(f"{path}: not a readable MRC file ({strict_msg}; {exc})") from None
    _check_header(path, mrc)
    _check_permissive(path, mrc, caught, strict_msg, header_only)
    return mrc, True


_MODES = (0, 1, 2, 4, 6, 12, 101)


def _check_header(path: Path, mrc) -> None:
    """Refuse a header whose mode, dimensions or axis mapping make no sense (closing ``mrc``)."""
    h = mrc.header
    try:
        dims = (int(h.nx), int(h.ny), int(h.nz))
        mode = int(h.mode)
        axes = (int(h.mapc), int(h.mapr), int(h.maps))
    except Exception:  # noqa: BLE001
        dims, mode, axes = (-1, -1, -1), -1, (0, 0, 0)
    problem = None
    if mode not in _MODES:
        problem = f"data mode {mode} is not an MRC mode ({', '.join(map(str, _MODES))})"
    elif min(dims) <= 0:
        problem = f"dimensions (nx, ny, nz) = {dims} must be positive"
    elif sorted(axes) != [1, 2, 3]:
        problem = f"axis mapping (mapc, mapr, maps) = {axes} is not a permutation of (1, 2, 3)"
    if problem is not None:
        try:
            mrc.close()
        except Exception:  # noqa: BLE001
            pass
        raise CryogradError(f"{path}: not a valid MRC file: {problem}")


def _check_permissive(path: Path, mrc, caught, strict_msg: str, header_only: bool) -> None:
    """Reject a permissively opened file whose data are unusable (its header passed
    :func:`_check_header`)."""
    problem = None
    h = mrc.header
    nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
    if not header_only and mrc.data is None:
        problem = "data are missing or truncated"
    elif not header_only and mrc.data.size != nx * ny * nz:
        problem = f"data size {mrc.data.size} does not match the header ({nx}x{ny}x{nz})"
    if problem is not None:
        try:
            mrc.close()
        except Exception:  # noqa: BLE001
            pass
        notes = "; ".join(str(w.message) for w in caught[:2])
        raise CryogradError(f"{path}: not a valid MRC file: {problem} ({strict_msg}; {notes})")
    logger.debug("%s: read in permissive mode (%s)", path, strict_msg)


def _header_of(path: Path, mrc, permissive: bool) -> MapHeader:
    h = mrc.header
    with np.errstate(divide="ignore", invalid="ignore"):
        vs = mrc.voxel_size
    vxyz = (float(vs.x), float(vs.y), float(vs.z))
    start = (int(h.nxstart), int(h.nystart), int(h.nzstart))
    origin = (float(h.origin.x), float(h.origin.y), float(h.origin.z))
    if not all(np.isfinite(origin)):
        origin = (0.0, 0.0, 0.0)
    if origin == (0.0, 0.0, 0.0) and start != (0, 0, 0):
        origin = (start[0] * vxyz[0], start[1] * vxyz[1], start[2] * vxyz[2])
    nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
    shape = (ny, nx) if nz == 1 and int(h.ispg) == 0 else (nz, ny, nx)
    # MRC2014 marks stacks with ispg 0, but many tools write ispg 0 for volumes too: a cube in a
    # file not named .mrcs is taken as a volume
    cube = nx == ny == nz
    is_stack = path.suffix.lower() == ".mrcs" or (int(h.ispg) == 0 and nz > 1 and not cube)
    voxel = vxyz[0] if np.isfinite(vxyz[0]) and vxyz[0] > 0 else 0.0
    return MapHeader(
        path=path,
        shape=shape,
        voxel_size_angstrom=voxel,
        voxel_size_xyz_angstrom=vxyz,
        origin_angstrom=origin,
        start_voxels=start,
        is_stack=is_stack,
        mode=int(h.mode),
        permissive=permissive,
    )


def read_map_header(path: str | os.PathLike) -> MapHeader:
    """Read only the header of an MRC file (fast, whatever the file size)."""
    path = Path(path)
    mrc, permissive = _open(path, mmap=False, header_only=True)
    try:
        header = _header_of(path, mrc, permissive)
        extended = int(mrc.header.nsymbt)
    finally:
        mrc.close()
    _check_size(path, header, extended)
    return header


_BYTES_PER_VOXEL = {0: 1.0, 1: 2.0, 2: 4.0, 4: 8.0, 6: 2.0, 12: 2.0, 101: 0.5}


def _check_size(path: Path, header: MapHeader, extended_bytes: int) -> None:
    """Truncation check from the file size (uncompressed files only)."""
    if path.suffix.lower() in (".gz", ".bz2"):
        return
    n_voxels = int(np.prod(header.shape, dtype=np.int64))
    expected = (
        1024
        + max(extended_bytes, 0)
        + int(np.ceil(n_voxels * _BYTES_PER_VOXEL.get(header.mode, 4.0)))
    )
    actual = path.stat().st_size
    if actual < expected:
        raise CryogradError(
            f"{path}: MRC file is truncated ({actual} bytes, the header needs {expected})"
        )


def read_map(path: str | os.PathLike) -> MapData:
    """Read an MRC map (or image/stack) into memory as float32.

    Parameters
    ----------
    path
        ``.mrc``, ``.mrcs``, ``.map``, ``.ccp4`` (gzip/bzip2-compressed files too).

    Returns
    -------
    MapData
        ``data`` float32 ``(z, y, x)``, voxel size and origin in Å.

    Raises
    ------
    CryogradError
        Missing, truncated, corrupt or non-MRC file.
    """
    path = Path(path)
    mrc, permissive = _open(path, mmap=False)
    try:
        header = _header_of(path, mrc, permissive)
        if mrc.data is None:
            raise CryogradError(f"{path}: MRC file has no data")
        data = np.asarray(mrc.data, dtype=np.float32).copy()
    finally:
        mrc.close()
    if np.iscomplexobj(data) or not np.all(np.isfinite(data)):
        raise CryogradError(f"{path}: map contains NaN or infinite values")
    return MapData(
        data=data,
        voxel_size_angstrom=header.voxel_size_angstrom,
        origin_angstrom=header.origin_angstrom,
        header=header,
    )


def open_stack(path: str | os.PathLike) -> tuple[np.ndarray, Any]:
    """Memory-map an image stack; returns ``(data (n, y, x), mrc)`` (keep ``mrc`` to close it).

    A single image ``(y, x)`` comes back as ``(1, y, x)``. Odd headers are accepted permissively.
    """
    path = Path(path)
    mrc, _ = _open(path, mmap=True)
    data = mrc.data
    if data is None:
        mrc.close()
        raise CryogradError(f"{path}: MRC file has no data")
    if data.ndim == 2:
        data = data[None]
    return data, mrc


def temporary_path(path: Path) -> Path:
    """A temporary name next to ``path`` (same folder, so ``os.replace`` is atomic)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def _set_voxel(mrc, voxel_size_angstrom: float, origin_angstrom=None) -> None:
    mrc.voxel_size = float(voxel_size_angstrom)
    if origin_angstrom is not None:
        ox, oy, oz = (float(v) for v in origin_angstrom)
        mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = ox, oy, oz


def write_map(
    path: str | os.PathLike,
    data: np.ndarray,
    voxel_size_angstrom: float,
    *,
    origin_angstrom: tuple[float, float, float] | None = None,
) -> Path:
    """Write a float32 MRC map atomically (temporary name, then rename).

    Parameters
    ----------
    path
        Destination (``.mrc``).
    data
        ``(z, y, x)`` (or ``(y, x)``) array; a torch tensor is accepted too.
    voxel_size_angstrom
        Voxel size in Å, written to the header.
    origin_angstrom
        Optional ``(x, y, z)`` origin in Å.
    """
    path = Path(path)
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    array = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
    tmp = temporary_path(path)
    try:
        with mrcfile.new(str(tmp), overwrite=True) as mrc:
            mrc.set_data(array)
            _set_voxel(mrc, voxel_size_angstrom, origin_angstrom)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def preallocate(path: Path) -> None:
    """Reserve the disk blocks of ``path`` at its current size (``posix_fallocate``).

    A memory-mapped file on a full disk (or beyond ``ulimit -f``) fails by SIGBUS at the first
    write to a page it cannot store; reserving the blocks first turns that into an
    :class:`OSError` (ENOSPC, EDQUOT, EFBIG) here. Where the call is unsupported nothing is done.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size > 0 and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    return
                raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)


class StackWriter:
    """Stream images batch by batch into an ``.mrcs`` stack, atomically.

    The stack is created at full size under a temporary name with ``mrcfile.new_mmap`` and renamed
    to ``path`` when the context closes normally with every image written; on an exception (or when
    fewer than ``n_images`` were written) the temporary file is deleted and ``path`` is untouched.

    Parameters
    ----------
    path
        Destination ``.mrcs``.
    n_images, box_size
        Stack shape ``(n_images, box_size, box_size)``.
    pixel_size_angstrom
        Pixel size written to the header.

    Examples
    --------
    >>> with StackWriter("out.mrcs", 100, 64, 1.5) as w:   # doctest: +SKIP
    ...     for batch in batches:                            # each (b, 64, 64)
    ...         w.write(batch)
    """

    def __init__(
        self, path: str | os.PathLike, n_images: int, box_size: int, pixel_size_angstrom: float
    ) -> None:
        self.path = Path(path)
        self.n_images = int(n_images)
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.n_written = 0
        self._tmp = temporary_path(self.path)
        self._mrc: Any = None

    def __enter__(self) -> StackWriter:
        if self.n_images <= 0 or self.box_size <= 0:
            raise ValueError("StackWriter needs n_images > 0 and box_size > 0")
        try:
            self._mrc = mrcfile.new_mmap(
                str(self._tmp),
                shape=(self.n_images, self.box_size, self.box_size),
                mrc_mode=2,
                overwrite=True,
            )
            preallocate(self._tmp)
        except OSError as exc:
            if self._mrc is not None:
                self._mrc.close()
                self._mrc = None
            self._tmp.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        self._mrc.set_image_stack()
        _set_voxel(self._mrc, self.pixel_size_angstrom)
        return self

    def write(self, images: np.ndarray) -> None:
        """Append a batch ``(b, D, D)`` (or one ``(D, D)`` image)."""
        if self._mrc is None:
            raise RuntimeError("StackWriter.write called outside its context")
        if hasattr(images, "detach"):
            images = images.detach().cpu().numpy()
        batch = np.asarray(images, dtype=np.float32)
        if batch.ndim == 2:
            batch = batch[None]
        if batch.shape[1:] != (self.box_size, self.box_size):
            raise ValueError(f"batch of shape {batch.shape} does not match box {self.box_size}")
        end = self.n_written + batch.shape[0]
        if end > self.n_images:
            raise ValueError(f"more than {self.n_images} images written to {self.path}")
        self._mrc.data[self.n_written : end] = batch
        self.n_written = end

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        mrc: Any
        mrc, self._mrc = self._mrc, None
        try:
            if exc_type is None and self.n_written != self.n_images:
                raise ValueError(
                    f"{self.path}: only {self.n_written} of {self.n_images} images were written"
                )
            if exc_type is None:
                mrc.update_header_stats()
            mrc.close()
            mrc = None
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            if mrc is not None:
                try:
                    mrc.close()
                except Exception:  # noqa: BLE001
                    pass
            if self._tmp.exists():
                self._tmp.unlink()
        return False


def write_stack(
    path: str | os.PathLike,
    images: np.ndarray,
    pixel_size_angstrom: float,
    *,
    batch_size: int = 1024,
) -> Path:
    """Write a whole ``(n, D, D)`` stack atomically (through :class:`StackWriter`)."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"write_stack expects (n, D, D) images, got {images.shape}")
    with StackWriter(path, images.shape[0], images.shape[1], pixel_size_angstrom) as writer:
        for start in range(0, images.shape[0], batch_size):
            writer.write(images[start : start + batch_size])
    return Path(path)
