"""Output folders: a lock per folder, and outputs staged beside it and moved into place whole.

A command that writes a folder of outputs (``reconstruct``, ``simulate``):

1. holds :func:`folder_lock` on ``OUTDIR`` — a file ``.OUTDIR.lock`` beside it, ``flock``-ed
   and holding the pid. A second run on the same folder is refused naming that pid; a lock left
   by a dead process (SIGKILL) holds no ``flock`` and is taken over.
2. writes its outputs into :func:`staging_folder` — a hidden folder ``.OUTDIR.stage-PID`` beside
   ``OUTDIR`` on the same file system — with the record (``run.json``, a STAR file) last;
3. moves it into place with :func:`commit_folder`: a new folder is renamed, an existing one is
   exchanged atomically (``renameat2(RENAME_EXCHANGE)`` on Linux) and what the old folder held
   besides the new outputs (checkpoints, logs, the user's files) is moved into the new one.

So ``OUTDIR`` never holds a map without its ``run.json``: a kill at any moment leaves either the
state before or the complete new folder (plus a hidden folder that :func:`recover_folder`, called
by the next run, tidies). On any failure the staging folder is removed.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryograd.errors import CryogradError

__all__ = [
    "folder_lock",
    "lock_path",
    "lock_holder",
    "staging_folder",
    "commit_folder",
    "recover_folder",
    "exchange_paths",
    "discard",
    "in_error",
]

logger = logging.getLogger(__name__)

_STAGE = ".stage-"
_OLD = ".old-"


def _abs(out: str | os.PathLike) -> Path:
    """``out`` as an absolute normalised path (``.`` -> the current folder's path)."""
    return Path(os.path.abspath(out))


def lock_path(out: str | os.PathLike) -> Path:
    """``.NAME.lock`` beside the folder ``out``."""
    out = _abs(out)
    return out.parent / f".{out.name}.lock"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def lock_holder(out: Path) -> int | None:
    """The pid of the live process holding ``out``'s lock, or None (free, or stale)."""
    lock = lock_path(out)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(lock) or -1
    except OSError:  # no flock on this file system: trust the pid
        pid = _read_pid(lock)
        return pid if _pid_alive(pid) and pid != os.getpid() else None
    finally:
        os.close(fd)
    return None


def _refuse(out: Path, pid: int) -> CryogradError:
    who = f"pid {pid}" if pid > 0 else "another process"
    return CryogradError(
        f"{out}: another cryograd run ({who}) is writing this folder (lock {lock_path(out)}); "
        "wait for it to end or choose another output folder"
    )


@contextmanager
def folder_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of the output folder ``out`` for the block.

    Raises
    ------
    CryogradError
        When a live process holds it (naming its pid).
    OSError
        When the lock cannot be made (folder not writable, disk full).
    """
    out = Path(out)
    lock = lock_path(out)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # name the output folder, not the hidden lock file
            raise OSError(exc.errno, exc.strerror, str(out)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refuse(out, _read_pid(lock)) from None
        except OSError:  # no flock here: fall back on the recorded pid
            pid = _read_pid(lock)
            if _pid_alive(pid) and pid != os.getpid():
                os.close(fd)
                raise _refuse(out, pid) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file after we opened it: take the new one
    stale = _read_pid(lock)
    if stale and stale != os.getpid():
        logger.info("%s: taking over the stale lock of pid %d", out, stale)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def staging_folder(out: str | os.PathLike) -> Path:
    """A new empty hidden folder ``.NAME.stage-PID`` beside ``out`` (same file system)."""
    out = _abs(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(out)) from None
    stage = out.parent / f".{out.name}{_STAGE}{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    return stage


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically (Linux ``renameat2``); False where that is unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _move_missing(src: Path, dst: Path, replace: tuple[str, ...] = ()) -> None:
    """Move the entries of ``src`` that ``dst`` lacks (or named in ``replace``) into ``dst``."""
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.name in replace or not (target.exists() or target.is_symlink()):
            os.replace(entry, target)


def commit_folder(
    stage: Path, out: Path, *, last: str | None = None, carry: tuple[str, ...] = ()
) -> None:
    """Move the complete folder ``stage`` to ``out``.

    Parameters
    ----------
    stage
        The staging folder (:func:`staging_folder`), complete.
    out
        The destination. Absent or empty: ``stage`` is renamed onto it. Otherwise the two are
        exchanged atomically and the old folder's other entries moved into the new one (those
        named in ``carry``, e.g. a log still being written, replace the staged copies); where
        the exchange is unsupported, the staged entries are moved in one by one with ``last``
        (the record) last.
    """
    stage, out = Path(stage), _abs(out)
    cwd = Path.cwd()
    inside = cwd == out or out in cwd.parents  # never swap the current folder away
    if out.is_dir() and not inside and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(stage, out)
        return
    if not inside and exchange_paths(stage, out):
        old = stage.parent / stage.name.replace(_STAGE, _OLD)
        os.rename(stage, old)  # the old folder, now at the staging name
        _move_missing(old, out, carry)
        shutil.rmtree(old, ignore_errors=True)
        return
    if last is not None:
        (out / last).unlink(missing_ok=True)
    names = sorted(e.name for e in stage.iterdir() if e.name not in (last, *carry))
    for name in [*names, *([last] if last and (stage / last).exists() else [])]:
        os.replace(stage / name, out / name)
    shutil.rmtree(stage, ignore_errors=True)


def in_error(exc: OSError, stage: Path, out: Path) -> OSError:
    """``exc`` with a path inside ``stage`` named as the same path inside ``out`` (or ``out``
    when it names none)."""
    name = exc.filename
    if name is None:
        where = str(out)
    else:
        text = str(name)
        prefix = str(stage)
        where = str(Path(out) / Path(text).relative_to(prefix)) if text.startswith(prefix) else text
    return OSError(exc.errno, exc.strerror, where)


def discard(stage: Path | None) -> None:
    """Remove a staging folder (after a failure); never raises."""
    if stage is not None:
        shutil.rmtree(stage, ignore_errors=True)


def recover_folder(out: str | os.PathLike) -> None:
    """Tidy what a killed run left beside ``out``: staging folders are removed; an old folder
    (killed between the exchange and the clean-up) gives its entries back to ``out``."""
    out = _abs(out)
    parent = out.parent
    if not parent.is_dir():
        return
    for entry in parent.glob(f".{out.name}.*-*"):
        rest = entry.name[len(out.name) + 1 :]
        if not entry.is_dir() or not rest.startswith((_STAGE, _OLD)):
            continue
        pid = int(rest.split("-")[-1]) if rest.split("-")[-1].isdigit() else 0
        if pid != os.getpid() and _pid_alive(pid):
            continue  # a live run's
        if rest.startswith(_OLD) and out.is_dir():
            _move_missing(entry, out)
        shutil.rmtree(entry, ignore_errors=True)
