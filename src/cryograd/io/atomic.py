"""Atomic output: write under a temporary name in the destination folder, then rename.

Every file cryograd writes goes through :func:`atomic_path`, so that an interrupted run never leaves
a half-written output under its final name, and outputs get the usual permissions (``0666`` less
the umask, like files opened with ``open``) rather than ``mkstemp``'s ``0600``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "default_file_mode"]


def default_file_mode() -> int:
    """``0o666`` less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path``; renamed onto ``path`` when the block succeeds.

    On an exception the temporary file is removed and the exception propagates; ``path`` is
    untouched.

    Examples
    --------
    >>> with atomic_path("fsc.csv") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("shell,fsc\\n")
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
