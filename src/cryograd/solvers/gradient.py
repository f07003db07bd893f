"""Minibatch optimisation of the map with ``torch.optim`` (Adam or SGD).

The objective is ``mean_i Σ_pixels ρ(A_i x − b_i) + R(x)`` with a data term ``ρ`` from
:mod:`cryograd.solvers.losses` and a penalty ``R`` from :mod:`cryograd.solvers.penalties` (smooth
part by autograd, the rest by its proximal operator after each step with the learning rate as the
step).
With ``l2`` and the ``l2`` penalty ``lam ‖x‖²`` the minimiser solves ``(AᵀA + N·lam) x = Aᵀb``
(``N`` training particles), so it can be compared with :mod:`cryograd.solvers.cg`.

A held-out validation split (``torch.utils.data.random_split`` seeded with ``seed``) is scored every
epoch; the best epoch's map is kept and training stops when the validation loss has not improved
for ``patience`` epochs. The order of the training particles in epoch ``e`` is a permutation drawn
from a generator seeded with ``(seed, e)`` only, so a run resumed from a checkpoint (written
atomically after every epoch: volume, optimiser state, history, RNG states) repeats exactly what an
uninterrupted run does.

Data: on a CUDA device the particles (images, CTFs, poses) are read once and kept on the device
for all epochs when they take under 40 % of its free memory
(:class:`cryograd.solvers.batches.DeviceParticleCache`), so an epoch costs about one projection
and one back-projection of the set; otherwise, and always on the CPU, they stream from the
memory-mapped stacks batch by batch.

Distributed: each global batch is the same for any number of processes; each process computes
the loss share of its shard, and the gradients are summed with ``comm.all_reduce_sum_`` before the
step (the penalty is added on the main process only), so every process takes the same step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cryograd.errors import CryogradError
from cryograd.solvers.batches import batch_loader, expand_symmetry, global_batches, load_batch
from cryograd.solvers.losses import DataLoss
from cryograd.solvers.penalties import NoPenalty, Penalty

__all__ = ["TrainResult", "train", "split_validation", "epoch_permutation", "save_checkpoint"]

logger = logging.getLogger(__name__)

METHODS = ("adam", "sgd")


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    volume
        ``(D, D, D)`` map of the best epoch (lowest validation loss).
    last_volume
        The map after the last epoch run.
    train_loss, val_loss
        Per epoch (``val_loss[0]`` is the starting map's, before any step).
    best_epoch
        Epoch of ``volume`` (0: the starting map).
    epochs_run
        Epochs completed.
    stopped_early
        Whether early stopping ended training.
    """

    volume: torch.Tensor
    last_volume: torch.Tensor
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    stopped_early: bool = False


def split_validation(indices: np.ndarray, val_fraction: float, seed: int):
    """Training and validation indices by ``torch.utils.data.random_split`` (seeded)."""
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    n_val = max(1, int(round(val_fraction * n))) if n > 1 else 0
    n_train = n - n_val
    gen = torch.Generator().manual_seed(int(seed))
    train_sub, val_sub = torch.utils.data.random_split(range(n), [n_train, n_val], generator=gen)
    return np.sort(indices[list(train_sub.indices)]), np.sort(indices[list(val_sub.indices)])


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of ``n`` training particles in ``epoch``: depends only on ``(seed, epoch)``."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) * 7919 + 17)
    return torch.randperm(n, generator=gen).numpy()


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` atomically (:func:`cryograd.io.atomic.atomic_path`: a temporary file in the
    same folder, then ``os.replace``), with the mode of a new file like every output."""
    from cryograd.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _batch_loss(model, volume, batch, loss_fn: DataLoss, normalizer: float, symmetry, comm):
    batch = expand_symmetry(batch, symmetry)
    pred = model.project(volume, batch.rotations, batch.shifts_px, batch.model_filter())
    return loss_fn(pred - batch.images, normalizer=normalizer, comm=comm)


def evaluate(
    model,
    volume,
    particles,
    indices,
    loss_fn,
    *,
    batch_size,
    use_ctf,
    symmetry,
    device,
    dtype,
    comm,
    loader=None,
) -> float:
    """Mean data loss per particle over ``indices`` (summed over processes).

    ``loader`` (``local_indices -> ParticleBatch``, e.g. :func:`batch_loader`) defaults to
    reading from the stacks."""
    if loader is None:

        def loader(local):
            return load_batch(particles, local, device=device, dtype=dtype, use_ctf=use_ctf)

    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        for global_batch in global_batches(indices, batch_size):
            local = comm.shard(global_batch)
            if len(local):
                batch = loader(local)
                share = _batch_loss(model, volume, batch, loss_fn, 1.0, symmetry, comm)
                total += share.to(torch.float64)
            elif getattr(loss_fn, "name", "") == "sorted-l1" and comm.world_size > 1:
                empty = torch.zeros((0, 1), device=device, dtype=dtype)
                loss_fn(empty, normalizer=1.0, comm=comm)  # take part in the gather
    comm.all_reduce_sum_(total)
    return float(total) / max(1, len(indices))


def train(
    particles,
    indices: np.ndarray,
    *,
    model,
    loss_fn: DataLoss,
    penalty: Penalty | None = None,
    method: str = "adam",
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 128,
    val_fraction: float = 0.05,
    seed: int = 0,
    patience: int = 3,
    init_volume: torch.Tensor | Callable[[np.ndarray], torch.Tensor] | None = None,
    use_ctf: bool = True,
    symmetry: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    comm=None,
    progress: bool = True,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    tag: str = "",
    lr_schedule: str = "constant",
    cache: bool | None = None,
) -> TrainResult:
    """Fit a map to particles ``indices`` by minibatch Adam or SGD.

    Parameters
    ----------
    particles, indices
        The set and the particles to fit (validation particles are drawn from them).
    model
        :class:`cryograd.forward.ForwardModel`.
    loss_fn, penalty
        Data term and penalty.
    method
        ``"adam"`` or ``"sgd"``.
    epochs, lr, batch_size
        Passes over the training particles, learning rate, particles per global batch.
    val_fraction
        Fraction of ``indices`` held out, in (0, 0.5).
    seed
        Seed of the validation split and of every epoch's order.
    patience
        Epochs without a lower validation loss before stopping.
    init_volume
        Starting map (default zeros), or a function ``train_indices -> map`` called with the
        training particles only (e.g. a direct reconstruction): a start made from all of
        ``indices`` has already fitted the validation particles, so its validation loss is
        optimistically low and every step away from it looks like a loss.
    checkpoint_path
        Where to write the checkpoint after every epoch (main process only); with ``resume``,
        training continues from it when it exists and belongs to the same ``tag``.
    tag
        Name of this run in the checkpoint (e.g. ``"half1"``).
    lr_schedule
        ``"constant"`` or ``"cosine"`` (the rate of epoch ``e`` is
        ``lr · ½(1 + cos(π (e − 1) / epochs))``, a function of the epoch only).
    cache
        Keep the particles (images, CTFs, poses) on the device for all epochs: None decides by
        memory (on a CUDA device when they take under 40 % of its free memory; never on the CPU,
        where the memory-mapped stacks are streamed), True/False force it.

    Returns
    -------
    TrainResult
    """
    from cryograd.distributed import single_process

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use adam or sgd")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {lr_schedule!r}")
    if not 0.0 < val_fraction < 0.5:
        raise CryogradError(f"--val-fraction must be in (0, 0.5), got {val_fraction}")
    for flag, value, low in (
        ("--epochs", epochs, 1),
        ("--batch-size", batch_size, 1),
        ("--patience", patience, 1),
    ):
        if int(value) != value or value < low:
            raise CryogradError(f"{flag} must be an integer of at least {low}, got {value}")
    if not (np.isfinite(lr) and lr > 0):
        raise CryogradError(f"--lr must be a positive number, got {lr}")
    comm = comm or single_process(device)
    penalty = penalty or NoPenalty()
    d = model.box_size
    train_idx, val_idx = split_validation(indices, val_fraction, seed)
    volume = torch.zeros((d, d, d), device=device, dtype=dtype)
    if callable(init_volume) and not isinstance(init_volume, torch.Tensor):
        init_volume = init_volume(train_idx)
    if init_volume is not None:
        volume = init_volume.detach().to(device=device, dtype=dtype).clone()
    volume.requires_grad_(True)
    if method == "adam":
        optimizer = torch.optim.Adam([volume], lr=lr)
    else:
        optimizer = torch.optim.SGD([volume], lr=lr)
    loader = batch_loader(
        particles, indices, device=device, dtype=dtype, use_ctf=use_ctf, cache=cache
    )
    eval_kw = dict(
        batch_size=batch_size,
        use_ctf=use_ctf,
        symmetry=symmetry,
        device=device,
        dtype=dtype,
        comm=comm,
        loader=loader,
    )
    state = None
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state.get("tag") != tag:
            state = None
    if state is not None:
        with torch.no_grad():
            volume.copy_(state["volume"])
        optimizer.load_state_dict(state["optimizer"])
        best_volume = state["best_volume"].to(device=device, dtype=dtype)
        history = state["history"]
        start_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["torch_rng"])
        logger.info("%s: resuming after epoch %d", tag or "train", start_epoch - 1)
    else:
        v0 = evaluate(model, volume.detach(), particles, val_idx, loss_fn, **eval_kw)
        history = {
            "train_loss": [float("nan")],
            "val_loss": [v0],
            "best_epoch": 0,
            "best_val": v0,
            "bad_epochs": 0,
            "stopped_early": False,
            "finished": False,
        }
        best_volume = volume.detach().clone()
        start_epoch = 1
    epoch = start_epoch - 1
    bar = tqdm(
        total=epochs,
        initial=start_epoch - 1,
        desc=f"{method} {tag}".strip(),
        unit="epoch",
        disable=not (progress and comm.is_main),
        leave=False,
    )
    try:
        for epoch in range(start_epoch, epochs + 1):
            if history["finished"]:
                break
            order = train_idx[epoch_permutation(len(train_idx), seed, epoch)]
            lr_epoch = lr
            if lr_schedule == "cosine":
                lr_epoch = lr * 0.5 * (1.0 + np.cos(np.pi * (epoch - 1) / epochs))
            for group in optimizer.param_groups:
                group["lr"] = lr_epoch
            running = torch.zeros((), dtype=torch.float64, device=device)
            for global_batch in global_batches(order, batch_size):
                optimizer.zero_grad(set_to_none=False)
                local = comm.shard(global_batch)
                share = None
                if len(local):
                    batch = loader(local)
                    share = _batch_loss(
                        model, volume, batch, loss_fn, len(global_batch), symmetry, comm
                    )
                if share is None:  # an empty shard still takes part in the loss's collectives
                    empty = volume.new_zeros((0, d, d)) + 0.0 * volume.sum()
                    total = loss_fn(empty, normalizer=len(global_batch), comm=comm)
                else:
                    total = share
                if comm.is_main:
                    total = total + penalty.smooth(volume)
                total.backward()
                comm.all_reduce_sum_(volume.grad)
                optimizer.step()
                penalty.prox_(volume.data, lr_epoch)
                running += (
                    share.detach().to(torch.float64) * len(global_batch)
                    if share is not None
                    else 0.0
                )
            comm.all_reduce_sum_(running)
            train_loss = float(running) / max(1, len(train_idx))
            val = evaluate(model, volume.detach(), particles, val_idx, loss_fn, **eval_kw)
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val)
            if val < history["best_val"] * (1 - 1e-6) or not np.isfinite(history["best_val"]):
                history["best_val"] = val
                history["best_epoch"] = epoch
                history["bad_epochs"] = 0
                best_volume = volume.detach().clone()
            else:
                history["bad_epochs"] += 1
            if history["bad_epochs"] >= patience:
                history["stopped_early"] = True
                history["finished"] = True
            if epoch == epochs:
                history["finished"] = True
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val:.4g}")
            logger.info(
                "%s epoch %d: train %.6g, validation %.6g%s",
                tag or method,
                epoch,
                train_loss,
                val,
                " (best)" if history["best_epoch"] == epoch else "",
            )
            if checkpoint_path is not None and comm.is_main:
                save_checkpoint(
                    Path(checkpoint_path),
                    {
                        "tag": tag,
                        "epoch": epoch,
                        "volume": volume.detach().cpu(),
                        "best_volume": best_volume.cpu(),
                        "optimizer": optimizer.state_dict(),
                        "history": history,
                        "torch_rng": torch.get_rng_state(),
                    },
                )
            if history["finished"]:
                break
    finally:
        bar.close()
    return TrainResult(
        volume=best_volume,
        last_volume=volume.detach().clone(),
        train_loss=list(history["train_loss"]),
        val_loss=list(history["val_loss"]),
        best_epoch=int(history["best_epoch"]),
        epochs_run=len(history["train_loss"]) - 1,
        stopped_early=bool(history["stopped_early"]),
    )
