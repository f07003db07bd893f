"""The random numbers ``relion_postprocess`` draws: glibc's ``srand``/``rand`` and RELION's
``rnd_unif``, reproduced exactly (no C library needed).

RELION 3.1 seeds with ``srand(--random_seed)`` (default 0) and draws the phases of
``randomizePhasesBeyond`` with ``rnd_unif(0, 2π) = float(rand()) / float(RAND_MAX / float(2π))``
in single precision. glibc's ``rand`` is its ``TYPE_3`` additive generator: ``r[0] = seed``
(0 becomes 1), ``r[i] = 16807 · r[i-1] mod (2³¹ - 1)`` for ``i < 31`` (Schrage's steps on a
signed 32-bit seed), ``r[i] = r[i-31]`` for
``31 <= i < 34``, ``r[i] = r[i-3] + r[i-31] mod 2³²`` beyond, and the ``k``-th output is
``r[k + 344] >> 1``.

The recurrence is linear modulo 2³², so a block of ``B`` outputs is a ``(B, 31)`` integer matrix
times the 31 previous values; the matrix products are exact in float64 with 16-bit pieces.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GlibcRand", "relion_uniform_phases"]

_LAG = 31
_MASK32 = (1 << 32) - 1
_BLOCK = 8192


def _block_matrix(n: int) -> np.ndarray:
    """``(n, 31)`` coefficients (mod 2³²) of ``r[t + j]`` on the state ``r[t-31 .. t-1]``."""
    rows = np.zeros((n + _LAG, _LAG), dtype=np.uint64)
    rows[:_LAG] = np.eye(_LAG, dtype=np.uint64)
    for j in range(_LAG, n + _LAG):
        rows[j] = (rows[j - 3] + rows[j - _LAG]) & _MASK32
    return rows[_LAG:]


class GlibcRand:
    """glibc's ``rand()`` after ``srand(seed)``; :meth:`draw` continues the same stream.

    Parameters
    ----------
    seed
        The ``srand`` seed (RELION's ``--random_seed``, >= 0).
    """

    _matrix: np.ndarray | None = None

    def __init__(self, seed: int = 0) -> None:
        s = int(seed) & 0xFFFFFFFF
        s = s if s != 0 else 1
        word = s - (1 << 32) if s >= 1 << 31 else s  # glibc keeps the seed in an int32_t
        r = [s]
        for _ in range(1, _LAG):  # glibc's Schrage step, C's truncating division
            hi = abs(word) // 127773 * (1 if word >= 0 else -1)
            lo = word - hi * 127773
            word = 16807 * lo - 2836 * hi
            if word < 0:
                word += 2147483647
            r.append(word)
        r += r[:3]
        for i in range(34, 344):
            r.append((r[i - 3] + r[i - _LAG]) & _MASK32)
        self._state = np.array(r[-_LAG:], dtype=np.uint64)

    @classmethod
    def _coefficients(cls) -> tuple[np.ndarray, np.ndarray]:
        if cls._matrix is None:
            cls._matrix = _block_matrix(_BLOCK)
        m = cls._matrix
        return (m & 0xFFFF).astype(np.float64), (m >> np.uint64(16)).astype(np.float64)

    def draw(self, n: int) -> np.ndarray:
        """The next ``n`` values of ``rand()``: ``(n,)`` int64 in ``[0, 2³¹ - 1]``."""
        out = np.empty(int(n), dtype=np.int64)
        lo, hi = self._coefficients()
        done = 0
        while done < n:
            take = min(_BLOCK, n - done)
            s = self._state.astype(np.int64)
            s_lo, s_hi = (s & 0xFFFF).astype(np.float64), (s >> 16).astype(np.float64)
            # r = (lo + 2^16 hi)(s_lo + 2^16 s_hi) mod 2^32, from 16-bit pieces: every sum of
            # 31 products is below 2^38, exact in float64
            low = (lo[:take] @ s_lo).astype(np.int64)
            mid = (lo[:take] @ s_hi + hi[:take] @ s_lo).astype(np.int64) & 0xFFFF
            vals = (low + (mid << 16)) & _MASK32
            out[done : done + take] = vals >> 1
            if take >= _LAG:
                self._state = vals[-_LAG:].astype(np.uint64)
            else:
                self._state = np.concatenate([self._state[take:], vals.astype(np.uint64)])
            done += take
        return out


def relion_uniform_phases(rng: GlibcRand, n: int) -> np.ndarray:
    """``n`` phases as RELION's ``rnd_unif(0, 2π)`` makes them, in float32 arithmetic:
    ``float(rand()) / float(RAND_MAX / float(2π))``. Returns ``(n,)`` float64 radians."""
    two_pi = np.float32(2.0 * np.pi)
    scale = np.float32(np.float32(2147483647) / two_pi)
    return (rng.draw(n).astype(np.float32) / scale).astype(np.float64)
