"""Normal operators ``AᵀA`` of the forward model and the right-hand side ``Aᵀb``.

``A`` is the forward model of :class:`cryograd.forward.ForwardModel` (shift, CTF, projector). Two
ways to apply ``AᵀA``:

* Fourier projector — a Toeplitz (convolution) operator built once from the data, as ASPIRE does:
  ``AᵀA x ≈ (P³ / D²) · crop(irfftn(W · rfftn(pad(x))))`` on the padded grid (``P ≈ pad · D``, at
  least ``2D`` for a true Toeplitz form), where ``W = Σ c²`` are the CTF² weights inserted by the
  Fourier-slice back-projector's scatter at ``q = (P/D) Aᵀk`` — the Fourier insertion
  (:func:`cryograd.solvers.insertion.insert_particles`), whose numerator also gives ``Aᵀb``
  exactly. Every iteration costs two FFTs of ``P³``, whatever the number of particles. The kernel
  is that of the continuous operator ``k(d) = (1/D²) Σ_i Σ_k c_ik² exp(2πi (A_iᵀ k)·d / D)`` seen
  through the trilinear window (its tails are damped by ``sinc²(d/P)``), which makes it positive
  semi-definite; compared with the exact ``AᵀA`` of the discrete projector it differs by the
  gridding window (a few per cent on a map). Where the support constraint (``crop ∘ pad``) does
  not matter this system is solved by the direct method's division ``N / (W + λ D²/P³)``; CG also
  honours the box, which fixes the low-frequency deficit of the division.
* Real-space projector — ``A`` and ``Aᵀ`` applied particle by particle in every application.

Each process contributes its shard of the particles to ``Aᵀb`` and to the kernel (or to each
``AᵀA x``), summed with ``comm.all_reduce_sum_``.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from cryograd.distributed import single_process
from cryograd.fourier import irfftn_centered
from cryograd.projectors import fourier_slice as fs
from cryograd.solvers.batches import batch_loader, expand_symmetry, global_batches, load_batch
from cryograd.solvers.insertion import FourierInsertion

__all__ = [
    "ToeplitzNormalOperator",
    "RealSpaceNormalOperator",
    "normal_rhs_from_insertion",
    "backproject_data",
]


class ToeplitzNormalOperator:
    """``x -> AᵀA x + λ x (+ R x)`` as a convolution on the padded grid (see module doc).

    Parameters
    ----------
    weights
        ``(P, P, P // 2 + 1)`` real CTF² weight sums of
        :func:`~cryograd.solvers.insertion.insert_particles` (full-grid sums).
    box_size
        ``D``.
    lam
        ``λ``.
    spectral_reg
        Optional ``(P, P, P // 2 + 1)`` real Wiener terms ``ρ(q)`` in the units of the weights
        (e.g. RELION's ``1/τ²`` per shell): adds ``R = crop · F⁻¹ (P³/D²) ρ F · pad``.
    """

    def __init__(
        self,
        weights: torch.Tensor,
        box_size: int,
        lam: float = 0.0,
        spectral_reg: torch.Tensor | None = None,
    ) -> None:
        self.box_size = int(box_size)
        self.size = int(weights.shape[0])
        # unnormalised inverse FFT: (P³/D²) · irfftn = (1/D²) · Σ_q
        scale = self.size**3 / self.box_size**2
        self.kernel_spectrum = weights * scale
        self.multiplier = self.kernel_spectrum
        if spectral_reg is not None:
            self.multiplier = self.kernel_spectrum + spectral_reg.to(weights.dtype) * scale
        self.lam = float(lam)

    def _convolve(self, x: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
        d, m = self.box_size, self.size
        padded = x.new_zeros((m, m, m))
        padded[:d, :d, :d] = x
        spec = torch.fft.rfftn(padded) * multiplier.to(x.dtype)
        return torch.fft.irfftn(spec, s=(m, m, m))[:d, :d, :d].contiguous()

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``AᵀA x`` (without ``λ`` and ``R``)."""
        return self._convolve(x, self.kernel_spectrum)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._convolve(x, self.multiplier) + self.lam * x

    def preconditioner(self, r: torch.Tensor) -> torch.Tensor:
        """``crop(irfftn(rfftn(pad(r)) / (K + R + λ)))``: the direct division as ``M⁻¹``."""
        denom = self.multiplier + max(self.lam, 1e-12)
        return self._convolve(r, 1.0 / denom)


def normal_rhs_from_insertion(
    insertion: FourierInsertion, *, gridding: bool = True
) -> torch.Tensor:
    """``Aᵀb`` of the Fourier forward model from the insertion numerator (exact, see direct's doc).

    ``Aᵀb = (P³ / D²) · G · crop(irfftn_centered(N))``.
    """
    d, p = insertion.box_size, insertion.padded
    vol = fs.crop_volume(irfftn_centered(insertion.numerator, p), d) * (p**3 / d**2)
    vol = vol.contiguous()
    return fs.gridding_correction(vol, p) if gridding else vol


class RealSpaceNormalOperator:
    """``x -> Σ_i A_iᵀ A_i x + λ x`` applied particle by particle (any projector).

    Parameters
    ----------
    model
        :class:`cryograd.forward.ForwardModel`.
    particles, indices
        The set and the (global) indices to use.
    lam
        ``λ``.
    use_ctf, symmetry, batch_size, device, dtype, comm
        As for :func:`cryograd.solvers.cg.solve_cg`.
    cache
        Keep poses and CTFs on the device across iterations (None: on a CUDA device when they
        fit, see :func:`cryograd.solvers.batches.should_cache`).
    """

    def __init__(
        self,
        model,
        particles,
        indices,
        *,
        lam=0.0,
        use_ctf=True,
        symmetry=None,
        batch_size=256,
        device="cpu",
        dtype=torch.float32,
        comm=None,
        cache: bool | None = None,
    ) -> None:
        self.model = model
        self.particles = particles
        self.indices = np.asarray(indices, dtype=np.int64)
        self.lam = float(lam)
        self.use_ctf = use_ctf
        self.symmetry = symmetry
        self.batch_size = int(batch_size)
        self.device = device
        self.dtype = dtype
        self.comm = comm or single_process(device)
        self._load = batch_loader(
            particles,
            self.indices,
            device=device,
            dtype=dtype,
            use_ctf=use_ctf,
            with_images=False,
            cache=cache,
        )

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for global_batch in global_batches(self.indices, self.batch_size):
            local = self.comm.shard(global_batch)
            if not len(local):
                continue
            batch = self._load(local)
            batch = expand_symmetry(batch, self.symmetry)
            filt = batch.model_filter()
            opt = batch.optics
            proj = self.model.project(x, batch.rotations, batch.shifts_px, filt, optics=opt)
            out += self.model.backproject(proj, batch.rotations, batch.shifts_px, filt, optics=opt)
        return self.comm.all_reduce_sum_(out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.normal(x) + self.lam * x


def backproject_data(
    model,
    particles,
    indices,
    *,
    use_ctf=True,
    symmetry=None,
    batch_size=256,
    device="cpu",
    dtype=torch.float32,
    comm=None,
    progress=True,
) -> torch.Tensor:
    """``Aᵀb`` by the forward model's back-projector, streamed over the particles."""
    comm = comm or single_process(device)
    d = model.box_size
    out = torch.zeros((d, d, d), device=device, dtype=dtype)
    indices = np.asarray(indices, dtype=np.int64)
    bar = tqdm(
        total=len(indices),
        desc="Aᵀb",
        unit="ptcl",
        disable=not (progress and comm.is_main),
        leave=False,
    )
    try:
        for global_batch in global_batches(indices, batch_size):
            local = comm.shard(global_batch)
            if len(local):
                batch = load_batch(particles, local, device=device, dtype=dtype, use_ctf=use_ctf)
                batch = expand_symmetry(batch, symmetry)
                out += model.backproject(
                    batch.images,
                    batch.rotations,
                    batch.shifts_px,
                    batch.model_filter(),
                    optics=batch.optics,
                )
            bar.update(len(global_batch))
    finally:
        bar.close()
    return comm.all_reduce_sum_(out)
