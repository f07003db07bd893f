"""Direct reconstruction: CTF-weighted Fourier insertion and Wiener division (RELION's ``--ctf``).

For particles ``b_i`` with poses ``A_i``, origins ``t_i`` and CTFs ``c_i``, two sums are accumulated
on the padded half grid (``P ≈ pad · D``, :func:`cryograd.projectors.fourier_slice.padded_size`) by
the Fourier-slice back-projector's own scatter
(:func:`~cryograd.projectors.fourier_slice.insert_slices`, trilinear, Friedel-mirrored)::

    N(q) = Σ_i insert( c_i · ramp(+t_i) · rfft2_centered(b_i) )        (numerator, complex)
    W(q) = Σ_i insert( c_i² )                                           (weights, real)

Images whose CTF is premultiplied (``rlnCtfDataAreCtfPremultiplied``) are inserted as they are, with
the same ``c_i²`` weights. Without CTF correction ``c_i = 1``. The map is

    x = gridding_correction( crop( irfftn_centered( N / (W + ρ) ) ) )

with the Wiener term ``ρ`` a constant ``1 / snr`` (``snr`` is the signal-to-noise power ratio of one
Fourier sample of one image), or per shell RELION's ``1/τ²`` from a half-map FSC
(:func:`cryograd.validation.inverse_tau2_from_fsc`), or ``ρ = λ D² / P³`` to match the operator
regulariser ``λ`` of ``(AᵀA + λI) x = Aᵀb`` (:func:`lam_to_wiener`, used by the CG comparison).

Scaling: with :class:`cryograd.forward.ForwardModel`'s Fourier projector, ``Aᵀb`` is
``(P³ / D²) · G · crop · irfftn(N)`` and ``AᵀA ≈ (P³ / D²) · G · crop · irfftn(W ·)`` (``G`` the
gridding correction), hence the factor in :func:`lam_to_wiener`. Samples of the ``kx = 0`` column of
each image (whose Friedel mates are also stored) enter with weight ½, as in the projector's adjoint,
and the ``qx = 0`` (and Nyquist) planes of the 3D half grid get their mirrored contributions added,
so ``N`` and ``W`` are the full-grid sums.

Each process inserts its shard of every global batch; the grids are summed with
``comm.all_reduce_sum_`` once at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from cryograd.fourier import irfftn_centered, rfft2_centered
from cryograd.projectors import fourier_slice as fs
from cryograd.shift import phase_ramp
from cryograd.solvers.batches import global_batches, load_batch

__all__ = [
    "FourierInsertion",
    "insert_particles",
    "padded_shell_index",
    "weight_shell_sums",
    "wiener_reconstruct",
    "lam_to_wiener",
    "reconstruct_direct",
    "insertion_memory_bytes",
]

logger = logging.getLogger(__name__)


@dataclass
class FourierInsertion:
    """The two insertion sums of a set of particles on the padded half grid.

    Attributes
    ----------
    numerator
        ``(P, P, P // 2 + 1)`` complex ``Σ c · ramp · FFT(b)`` (full-grid sums, see module doc).
    weights
        ``(P, P, P // 2 + 1)`` real ``Σ c²``.
    box_size, padded
        ``D`` and ``P``.
    n_particles
        Particles inserted (before symmetry expansion).
    """

    numerator: torch.Tensor
    weights: torch.Tensor
    box_size: int
    padded: int
    n_particles: int

    def __add__(self, other: FourierInsertion) -> FourierInsertion:
        if (self.box_size, self.padded) != (other.box_size, other.padded):
            raise ValueError("cannot add insertions of different grids")
        return FourierInsertion(
            self.numerator + other.numerator,
            self.weights + other.weights,
            self.box_size,
            self.padded,
            self.n_particles + other.n_particles,
        )


def insertion_memory_bytes(box_size: int, pad: float = 2.0, *, dtype=torch.float32) -> int:
    """Bytes the insertion grids of one half set take (numerator, weights, folded copies)."""
    p = fs.padded_size(box_size, pad)
    ext = (p + 2) ** 2 * (p // 2 + 2)
    real = torch.finfo(dtype).bits // 8
    # two complex extended accumulators + folded numerator/weights + working copies
    return int(ext * 2 * real * 2 + p * p * (p // 2 + 1) * real * 2 * 3)


def _half_column_factor(box_size: int, device, dtype) -> torch.Tensor:
    """``c / 2`` of the 2D half grid: ½ on the ``kx = 0`` (and Nyquist) column, 1 elsewhere."""
    c = torch.ones(box_size // 2 + 1, device=device, dtype=dtype)
    c[0] = 0.5
    if box_size % 2 == 0:
        c[-1] = 0.5
    return c


def _symmetrize_planes(spectrum: torch.Tensor, padded: int) -> torch.Tensor:
    """Add the mirrored contributions on the ``qx = 0`` (and Nyquist) planes: ``X + conj X(-q)``."""
    herm = fs.hermitian_part_rfft(spectrum, padded, 3)
    cols = [0] + ([padded // 2] if padded % 2 == 0 else [])
    out = spectrum.clone()
    for col in cols:
        out[..., col] = 2.0 * herm[..., col]
    return out


def insert_particles(
    particles,
    indices: np.ndarray,
    *,
    pad: float = 2.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    use_ctf: bool = True,
    symmetry: torch.Tensor | None = None,
    max_shell: int | None = None,
    comm=None,
    progress: bool = True,
    desc: str = "insert",
) -> FourierInsertion:
    """Insert particles ``indices`` of a set into the padded Fourier grid.

    Parameters
    ----------
    particles
        :class:`cryograd.particles.ParticleSet` with poses (and CTFs unless ``use_ctf`` is false).
    indices
        ``(n,)`` particle indices (the global list; each process takes its shard of each batch).
    pad
        Padding factor of the 3D grid.
    device, dtype
        Where and in which real precision to compute (float32 or float64).
    batch_size
        Particles per global batch (default: the projector's chunk size).
    use_ctf
        Weight by the CTF (false: ``c = 1``).
    symmetry
        ``(G, 3, 3)`` symmetry operators (:func:`cryograd.symmetry.symmetry_matrices`): each
        particle is also inserted at the poses ``A Rᵀ``.
    max_shell
        Leave out image samples beyond this shell (in ``D``-grid units) — for ``--maxres``.
    comm
        :class:`cryograd.distributed.Communicator` (default: one process).
    progress
        Show a tqdm bar over particles (on the main process only).

    Returns
    -------
    FourierInsertion
    """
    from cryograd.distributed import single_process

    comm = comm or single_process(device)
    d = int(particles.box_size)
    p = fs.padded_size(d, pad)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    n_sym = 1 if symmetry is None else int(symmetry.shape[0])
    if batch_size is None:
        batch_size = max(1, fs.default_batch_size(d) // n_sym)
    sym = None if symmetry is None or n_sym == 1 else symmetry.to(device=device, dtype=dtype)
    num_acc = fs.ExtendedSpectrum.zeros(p, device=device, dtype=cdtype)
    w_acc = fs.ExtendedSpectrum.zeros(p, device=device, dtype=cdtype)
    col = _half_column_factor(d, device, dtype)
    keep = None
    if max_shell is not None:
        kx = torch.fft.rfftfreq(d, d=1.0 / d, device=device, dtype=dtype)
        ky = torch.fft.fftfreq(d, d=1.0 / d, device=device, dtype=dtype)
        keep = (ky[:, None] ** 2 + kx[None, :] ** 2 <= float(max_shell) ** 2).to(dtype)
        col = col * keep
    indices = np.asarray(indices, dtype=np.int64)
    bar = tqdm(
        total=len(indices), desc=desc, unit="ptcl", disable=not (progress and comm.is_main),
        leave=False,
    )
    try:
        for global_batch in global_batches(indices, batch_size):
            local = comm.shard(global_batch)
            if len(local):
                batch = load_batch(particles, local, device=device, dtype=dtype, use_ctf=use_ctf)
                spectra = rfft2_centered(batch.images)  # (b, D, D//2+1)
                if batch.shifts_px is not None:
                    spectra = spectra * phase_ramp(batch.shifts_px, d, dtype=dtype)
                data_filter = batch.data_filter()
                if data_filter is not None:
                    spectra = spectra * data_filter
                    weights = batch.ctf * batch.ctf
                else:
                    weights = torch.ones((len(batch), d, d // 2 + 1), device=device, dtype=dtype)
                spectra = spectra * col
                weights = (weights * col).to(cdtype)
                rotations = batch.rotations
                if sym is not None:
                    rotations = (rotations[:, None] @ sym.transpose(-1, -2)[None]).reshape(-1, 3, 3)
                    spectra = spectra.repeat_interleave(n_sym, dim=0)
                    weights = weights.repeat_interleave(n_sym, dim=0)
                geom = fs.slice_geometry(rotations, d, p, dtype=dtype)
                fs.insert_slices(spectra, geom, accumulator=num_acc)
                fs.insert_slices(weights, geom, accumulator=w_acc)
            bar.update(len(global_batch))
    finally:
        bar.close()
    numerator = fs.ExtendedSpectrum.fold(num_acc, p)
    del num_acc
    weights = fs.ExtendedSpectrum.fold(w_acc, p).real.contiguous()
    del w_acc
    comm.all_reduce_sum_(numerator)
    comm.all_reduce_sum_(weights)
    numerator = _symmetrize_planes(numerator, p)
    weights = _symmetrize_planes(weights, p)
    return FourierInsertion(numerator, weights, d, p, int(len(indices)))


def padded_shell_index(box_size: int, padded: int, *, device=None) -> torch.Tensor:
    """Shell ``round(|q| · D / P)`` (``D``-grid units) of every sample of the padded half grid."""
    key = (int(box_size), int(padded), str(torch.device(device or "cpu")))
    cached = _SHELL_CACHE.get(key)
    if cached is None:
        cached = _padded_shell_index(box_size, padded, device)
        _SHELL_CACHE.clear()  # keep one grid: they are large
        _SHELL_CACHE[key] = cached
    return cached


_SHELL_CACHE: dict[tuple, torch.Tensor] = {}


def _padded_shell_index(box_size: int, padded: int, device) -> torch.Tensor:
    k = torch.fft.fftfreq(padded, d=1.0 / padded, device=device, dtype=torch.float64)
    kx = torch.fft.rfftfreq(padded, d=1.0 / padded, device=device, dtype=torch.float64)
    r = torch.sqrt(k.view(-1, 1, 1) ** 2 + k.view(1, -1, 1) ** 2 + kx.view(1, 1, -1) ** 2)
    return torch.round(r * (box_size / padded)).long()


def weight_shell_sums(insertion: FourierInsertion) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of the ``Σ c²`` weights per shell ``0 .. D // 2`` (for RELION's ``τ²``)."""
    from cryograd.validation import shell_sums

    shells = padded_shell_index(insertion.box_size, insertion.padded,
                                device=insertion.weights.device)
    return shell_sums(insertion.weights, shells, insertion.box_size // 2 + 1)


def lam_to_wiener(lam: float, box_size: int, padded: int) -> float:
    """The Wiener term ``ρ = λ D² / P³`` equal to the operator regulariser ``λ`` (see module)."""
    return float(lam) * box_size**2 / padded**3


def wiener_reconstruct(
    insertion: FourierInsertion,
    regularizer: float | torch.Tensor,
    *,
    max_shell: int | None = None,
    gridding: bool = True,
) -> torch.Tensor:
    """The map ``G · crop(irfftn(N / (W + ρ)))`` of an insertion.

    Parameters
    ----------
    insertion
        The insertion sums.
    regularizer
        ``ρ``: a constant (``1 / snr``), or ``(D // 2 + 1,)`` values per shell (e.g. ``1/τ²``;
        samples beyond the last shell use its value).
    max_shell
        Zero the spectrum beyond this shell (``D``-grid units), e.g. for ``--maxres``.
    gridding
        Apply the trilinear gridding correction (as the forward model does).

    Returns
    -------
    torch.Tensor
        ``(D, D, D)`` real, the real dtype of the insertion.
    """
    d, p = insertion.box_size, insertion.padded
    w = insertion.weights
    shells = None
    if isinstance(regularizer, torch.Tensor) and regularizer.numel() > 1:
        shells = padded_shell_index(d, p, device=w.device)
        reg_shell = regularizer.to(device=w.device, dtype=w.dtype).reshape(-1)
        reg = reg_shell[shells.clamp(max=reg_shell.numel() - 1)]
    else:
        reg = float(regularizer)
    denom = w + reg
    tiny = torch.finfo(w.dtype).tiny
    spectrum = insertion.numerator / torch.where(denom.abs() > tiny, denom, torch.ones_like(denom))
    spectrum = torch.where(denom.abs() > tiny, spectrum, torch.zeros_like(spectrum))
    if max_shell is not None:
        if shells is None:
            shells = padded_shell_index(d, p, device=w.device)
        spectrum = torch.where(shells <= max_shell, spectrum, torch.zeros_like(spectrum))
    volume = fs.crop_volume(irfftn_centered(spectrum, p), d).contiguous()
    if gridding:
        volume = fs.gridding_correction(volume, p)
    return volume


def reconstruct_direct(
    particles,
    indices: np.ndarray | None = None,
    *,
    snr: float | None = None,
    lam: float | None = None,
    pad: float = 2.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    use_ctf: bool = True,
    symmetry: torch.Tensor | None = None,
    max_shell: int | None = None,
    comm=None,
    progress: bool = True,
    refine: int = 0,
) -> torch.Tensor:
    """One direct reconstruction of particles ``indices`` with a constant Wiener term.

    Give ``snr`` (``ρ = 1 / snr``) or ``lam`` (``ρ = λ D² / P³``, the ``λ`` of
    ``(AᵀA + λI) x = Aᵀb``); with neither, ``ρ = 1e-3 ·`` the mean weight inside Nyquist. For the
    gold-standard procedure with half maps and RELION's ``τ²`` use :func:`cryograd.reconstruct`.
    ``refine`` CG iterations in the box follow the division
    (:func:`cryograd.solvers.cg.refine_in_box`).

    Returns
    -------
    torch.Tensor
        ``(D, D, D)``.
    """
    if indices is None:
        indices = np.arange(len(particles))
    ins = insert_particles(
        particles, indices, pad=pad, device=device, dtype=dtype, batch_size=batch_size,
        use_ctf=use_ctf, symmetry=symmetry, max_shell=max_shell, comm=comm, progress=progress,
    )
    if snr is not None and lam is not None:
        raise ValueError("give snr or lam, not both")
    if snr is not None:
        reg = 1.0 / float(snr)
    elif lam is not None:
        reg = lam_to_wiener(lam, ins.box_size, ins.padded)
    else:
        reg = default_regularizer(ins)
    volume = wiener_reconstruct(ins, reg, max_shell=max_shell)
    if refine > 0:
        from cryograd.solvers.cg import refine_in_box

        volume = refine_in_box(ins, reg, volume, iterations=refine)
    return volume


def default_regularizer(insertion: FourierInsertion) -> float:
    """A small Wiener term, ``1e-3 ·`` the mean weight of the samples inside Nyquist."""
    sums, counts = weight_shell_sums(insertion)
    mean_w = float(sums.sum() / counts.sum().clamp_min(1.0))
    return 1e-3 * max(mean_w, 1e-12)
