"""The Wiener division of the insertion sums and its inverse transform, slab by slab.

``crop(irfftn_centered(N / (W + ρ)))`` computed without any temporary grid of the padded size:
the division runs over slabs of ``y`` (all ``z``, all ``x``), each slab is transformed along ``z``
at once and cropped to the box's ``D`` rows; the ``(D, P, P // 2 + 1)`` result (half a padded
grid at ``--pad 2``) is then transformed along ``y`` and ``x`` slab by slab in ``z``, cropping after
each axis. The multi-dimensional inverse FFT is this sequence of 1D transforms (complex along
``z`` and ``y``, complex-to-real along ``x``), and a crop in real space along one axis commutes
with the transforms along the others, so the map is the same up to float rounding. The shell
index of the padded grid (RELION's ``round(|q| · D / P)``) is computed per slab as well (the
values of :func:`cryograd.solvers.insertion.padded_shell_index`), so the division, the weight
sums per shell and the default Wiener term hold only the two insertion grids and the
``(D, P, P // 2 + 1)`` intermediate: at box 448, pad 2, that is 1.4 GB instead of the 5.8 GB
(numerator-sized spectrum, ``denominator``, shell index and ``irfftn``'s output and shift) of
dividing the whole grid at once.
"""

from __future__ import annotations

import functools

import torch

from cryograd.solvers.insertion import regularizer_from_shell_sums

__all__ = ["shell_index_slab", "weight_shell_sums", "default_regularizer", "divide_and_invert"]

#: Samples of the padded grid per slab (a few tens of MB of temporaries per slab).
SLAB_SAMPLES = 1 << 22


def _slab_rows(padded: int, half: int, rows: int) -> int:
    """Rows per slab so that a slab holds about :data:`SLAB_SAMPLES` samples."""
    return max(1, min(rows, SLAB_SAMPLES // max(1, padded * half)))


def _squared_radius_slab(padded: int, y0: int, y1: int, device) -> torch.Tensor:
    """int64 ``|q|²`` (an integer: ``q`` is integer) of the padded half grid's rows ``y0:y1``."""
    k = torch.fft.fftfreq(padded, d=1.0 / padded, device=device, dtype=torch.float64).long()
    kx = torch.fft.rfftfreq(padded, d=1.0 / padded, device=device, dtype=torch.float64).long()
    r2_yx = k[y0:y1].view(-1, 1) ** 2 + kx.view(1, -1) ** 2
    return r2_yx.unsqueeze(0) + (k**2).view(-1, 1, 1)


def _shell_of_squared_radius(box_size: int, padded: int, device) -> torch.Tensor:
    """int64 table: shell ``round(sqrt(r²) · D / P)`` of every ``r²`` the padded grid holds (the
    float64 arithmetic of :func:`~cryograd.solvers.insertion.padded_shell_index`, done once per
    value instead of once per sample)."""
    top = 3 * (padded // 2) ** 2 + 1
    r2 = torch.arange(top, device=device, dtype=torch.float64)
    return torch.round(torch.sqrt(r2) * (box_size / padded)).long()


def shell_index_slab(box_size: int, padded: int, y0: int, y1: int, *, device=None) -> torch.Tensor:
    """int32 shells ``round(|q| · D / P)`` of the padded half grid's rows ``y0:y1`` (all ``z``, all
    ``x``): ``(P, y1 - y0, P // 2 + 1)``, the values of
    :func:`~cryograd.solvers.insertion.padded_shell_index` there (same float64 arithmetic)."""
    table = _shell_of_squared_radius(box_size, padded, device).to(torch.int32)
    return table[_squared_radius_slab(padded, y0, y1, device)]


@functools.lru_cache(maxsize=4)
def _squared_radius_counts(padded: int, device: str) -> torch.Tensor:
    """float64 number of samples of the padded half grid at every ``|q|²`` (its geometry only)."""
    top = 3 * (padded // 2) ** 2 + 1
    counts = torch.zeros(top, dtype=torch.float64, device=device)
    step = _slab_rows(padded, padded // 2 + 1, padded)
    for y0 in range(0, padded, step):
        r2 = _squared_radius_slab(padded, y0, min(padded, y0 + step), device).reshape(-1)
        counts += torch.bincount(r2, minlength=top).to(torch.float64)
    return counts


def weight_shell_sums(insertion) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of the ``Σ c²`` weights per shell ``0 .. D // 2`` (for RELION's ``τ²``), as
    :func:`cryograd.solvers.insertion.weight_shell_sums`, slab by slab: the weights are summed
    per value of ``|q|²`` (an integer), and those sums per shell."""
    d, p = insertion.box_size, insertion.padded
    w = insertion.weights
    n_shells = d // 2 + 1
    table = _shell_of_squared_radius(d, p, w.device)
    sums = torch.zeros(table.numel(), dtype=torch.float64, device=w.device)
    step = _slab_rows(p, w.shape[-1], p)
    for y0 in range(0, p, step):
        y1 = min(p, y0 + step)
        r2 = _squared_radius_slab(p, y0, y1, w.device).reshape(-1)
        values = w[:, y0:y1].reshape(-1).to(torch.float64)
        sums += torch.bincount(r2, weights=values, minlength=table.numel())
    counts = _squared_radius_counts(p, str(w.device)).to(w.device)
    inside = table < n_shells
    shell_sums = torch.zeros(n_shells, dtype=torch.float64, device=w.device)
    shell_counts = torch.zeros(n_shells, dtype=torch.float64, device=w.device)
    shell_sums.index_add_(0, table[inside], sums[inside])
    shell_counts.index_add_(0, table[inside], counts[inside])
    return shell_sums, shell_counts


def default_regularizer(insertion) -> float:
    """A small Wiener term, ``1e-3 ·`` the mean weight of the samples inside Nyquist (inside the
    insertion's resolution limit when it has one), as
    :func:`cryograd.solvers.insertion.default_regularizer`, with no shell-index grid."""
    return regularizer_from_shell_sums(*weight_shell_sums(insertion), insertion.max_shell)


def _crop_into(out: torch.Tensor, full: torch.Tensor, dim: int) -> None:
    """``out = crop(fftshift(full))`` along ``dim``: the centred ``D`` of an unshifted length-``P``
    inverse transform (its rows ``-D//2 .. D - D//2 - 1`` mod ``P``), as two block copies."""
    d, p = out.shape[dim], full.shape[dim]
    lo = d // 2
    out.narrow(dim, 0, lo).copy_(full.narrow(dim, p - lo, lo))
    out.narrow(dim, lo, d - lo).copy_(full.narrow(dim, 0, d - lo))


def divide_and_invert(
    insertion,
    regularizer: float | torch.Tensor,
    *,
    max_shell: int | None = None,
) -> torch.Tensor:
    """``crop(irfftn_centered(N / (W + ρ)))``: the ``(D, D, D)`` map before gridding correction.

    Parameters
    ----------
    insertion
        :class:`~cryograd.solvers.insertion.FourierInsertion` (left unchanged).
    regularizer
        ``ρ``: a constant, or ``(D // 2 + 1,)`` values per shell (samples beyond the last shell use
        its value).
    max_shell
        Zero the spectrum beyond this shell (``D``-grid units).

    Returns
    -------
    torch.Tensor
        ``(D, D, D)`` real, the weights' dtype. Samples with ``W + ρ == 0`` count as 0.
    """
    d, p = insertion.box_size, insertion.padded
    num, w = insertion.numerator, insertion.weights
    half = w.shape[-1]
    device = w.device
    table = _shell_of_squared_radius(d, p, device)
    reg_r2 = zero_r2 = None  # per value of |q|²: the Wiener term, and "beyond max_shell"
    if isinstance(regularizer, torch.Tensor) and regularizer.numel() > 1:
        reg_shell = regularizer.to(device=device, dtype=w.dtype).reshape(-1)
        reg_r2 = reg_shell[table.clamp(max=reg_shell.numel() - 1)]
        reg: float | torch.Tensor = 0.0
    else:
        reg = float(regularizer)
    if max_shell is not None:
        zero_r2 = table > max_shell
    tiny = torch.finfo(w.dtype).tiny
    stage = torch.empty((d, p, half), dtype=num.dtype, device=device)  # z transformed, cropped
    step = _slab_rows(p, half, p)
    for y0 in range(0, p, step):
        y1 = min(p, y0 + step)
        r2 = None
        if reg_r2 is not None or zero_r2 is not None:
            r2 = _squared_radius_slab(p, y0, y1, device)
        if reg_r2 is not None:
            reg = reg_r2[r2]
        denom = w[:, y0:y1] + reg
        inverse = torch.reciprocal(denom)
        inverse.masked_fill_(denom.abs() <= tiny, 0.0)
        del denom
        if zero_r2 is not None:
            inverse.masked_fill_(zero_r2[r2], 0.0)
        # a real factor on (re, im): no complex division, no second pass to zero the empty ones
        spectrum = torch.view_as_real(num[:, y0:y1]) * inverse.unsqueeze(-1)
        del inverse, r2
        _crop_into(stage[:, y0:y1], torch.fft.ifft(torch.view_as_complex(spectrum), dim=0), 0)
        del spectrum
    volume = torch.empty((d, d, d), dtype=w.dtype, device=device)
    step = _slab_rows(p, half, d)
    for z0 in range(0, d, step):
        z1 = min(d, z0 + step)
        rows = torch.empty((z1 - z0, d, half), dtype=stage.dtype, device=device)
        _crop_into(rows, torch.fft.ifft(stage[z0:z1], dim=1), 1)
        _crop_into(volume[z0:z1], torch.fft.irfft(rows, n=p, dim=2), 2)
    return volume
