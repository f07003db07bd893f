"""The compiled extension's library (``_cpu_slices``), loaded by path with ctypes.

Besides the Fourier-slice loops it holds the STAR row parser (``io/_star_rows.c``), the image
statistics (``_image_stats.c``) and the Euler-angle rotations (``_euler.c``). Loading it by path
imports nothing of the projectors (and so not torch); where it was not built, callers use their
NumPy or pandas path.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
from functools import cache
from pathlib import Path

__all__ = ["native_function"]


@cache
def _library() -> ctypes.CDLL | None:
    folder = Path(__file__).resolve().parent / "projectors" / "fourier_slice"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"_cpu_slices{suffix}"
        if path.is_file():
            try:
                return ctypes.CDLL(str(path))
            except OSError:
                return None
    return None


def native_function(name: str, argtypes: list, restype=None):
    """Function ``name`` of the extension with its ctypes signature, or None (not built)."""
    lib = _library()
    fn = getattr(lib, name, None) if lib is not None else None
    if fn is not None:
        fn.argtypes, fn.restype = argtypes, restype
    return fn
