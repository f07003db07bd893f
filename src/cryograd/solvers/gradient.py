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

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cryograd.io.atomic import atomic_path
from cryograd.solvers.batches import batch_loader, expand_symmetry, global_batches, load_batch
from cryograd.solvers.config import (
    LR_SCHEDULES,
    check_at_least,
    check_choice,
    check_positive,
    check_val_fraction,
)
from cryograd.solvers.context import CONTEXT_FIELDS, RunContext
from cryograd.solvers.losses import DataLoss
from cryograd.solvers.optimizers import OPTIMIZERS
from cryograd.solvers.particle_weights import residual_factors
from cryograd.solvers.penalties import NoPenalty, Penalty

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "split_validation",
    "epoch_permutation",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

METHODS = tuple(OPTIMIZERS)


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
    order = torch.randperm(n, generator=gen).numpy()  # what random_split draws
    return np.sort(indices[order[:n_train]]), np.sort(indices[order[n_train:]])


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of ``n`` training particles in ``epoch``: depends only on ``(seed, epoch)``."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) * 7919 + 17)
    return torch.randperm(n, generator=gen).numpy()


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` atomically (:func:`cryograd.io.atomic.atomic_path`: a temporary file in the
    same folder, then ``os.replace``), with the mode of a new file like every output."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _batch_loss(
    model, volume, batch, loss_fn: DataLoss, normalizer: float, symmetry, comm, weights=None
):
    batch = expand_symmetry(batch, symmetry)
    pred = model.project(
        volume, batch.rotations, batch.shifts_px, batch.model_filter(), optics=batch.optics
    )
    residual = pred - batch.images
    factors = residual_factors(weights, batch.indices, residual)  # √w: w times the l2 loss
    if factors is not None:
        residual = residual * factors
    return loss_fn(residual, normalizer=normalizer, comm=comm)


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
    reading from the stacks. The validation loss is unweighted (``--robust`` weights the
    training loss only)."""
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


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train`, validated when made.

    Attributes
    ----------
    optimizer
        A name in :data:`cryograd.solvers.optimizers.OPTIMIZERS` (``"adam"``, ``"sgd"``).
    epochs, lr, batch_size
        Passes over the training particles, learning rate, particles per global batch.
    val_fraction
        Fraction of the particles held out, in (0, 0.5).
    seed
        Seed of the validation split and of every epoch's order.
    patience
        Epochs without a lower validation loss before stopping.
    lr_schedule
        ``"constant"`` or ``"cosine"`` (the rate of epoch ``e`` is
        ``lr · ½(1 + cos(π (e − 1) / epochs))``, a function of the epoch only).
    resume
        Continue from the checkpoint when it exists and belongs to the same tag.
    cache
        Keep the particles (images, CTFs, poses) on the device for all epochs: None decides by
        memory (on a CUDA device when they take under 40 % of its free memory; never on the CPU,
        where the memory-mapped stacks are streamed), True/False force it.
    progress
        Show a tqdm bar over epochs (main process only).
    """

    optimizer: str = "adam"
    epochs: int = 20
    lr: float = 1e-3
    batch_size: int = 128
    val_fraction: float = 0.05
    seed: int = 0
    patience: int = 3
    lr_schedule: str = "constant"
    resume: bool = False
    cache: bool | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, tuple(OPTIMIZERS))
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_val_fraction(self.val_fraction)
        check_at_least("epochs", self.epochs, 1)
        check_at_least("batch_size", self.batch_size, 1)
        check_at_least("patience", self.patience, 1)
        check_positive("lr", self.lr if self.lr is not None else float("nan"))

    def learning_rate(self, epoch: int) -> float:
        """The rate of ``epoch`` (1-based) under the schedule."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + np.cos(np.pi * (epoch - 1) / self.epochs))
        return self.lr


def _train_settings(
    config: TrainConfig | None, context: RunContext | None, options: dict
) -> tuple[TrainConfig, RunContext]:
    """The config and context of :func:`train` from its keyword options (``method`` is the
    optimiser's name; ``device``, ``dtype``, ``use_ctf``, ``symmetry``, ``comm`` the context)."""
    options = dict(options)
    if "method" in options:
        options["optimizer"] = options.pop("method")
    ctx_opts = {k: options.pop(k) for k in CONTEXT_FIELDS if k in options}
    names = {f for f in TrainConfig.__dataclass_fields__}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"train() got unexpected keyword arguments {', '.join(unknown)}")
    if config is None:
        config = TrainConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    if context is None:
        context = RunContext.from_options({"device": "cpu", **ctx_opts})
    return config, context


def train(
    particles,
    indices: np.ndarray,
    *,
    model,
    loss_fn: DataLoss,
    penalty: Penalty | None = None,
    config: TrainConfig | None = None,
    context: RunContext | None = None,
    init_volume: torch.Tensor | Callable[[np.ndarray], torch.Tensor] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    tag: str = "",
    **options,
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
    config
        :class:`TrainConfig`; keyword ``options`` named like its fields (``method`` for
        ``optimizer``) make one or override it.
    context
        :class:`cryograd.solvers.context.RunContext`; or the options ``device`` (default
        ``"cpu"``), ``dtype``, ``use_ctf``, ``symmetry``, ``comm``.
    init_volume
        Starting map (default zeros), or a function ``train_indices -> map`` called with the
        training particles only (e.g. a direct reconstruction): a start made from all of
        ``indices`` has already fitted the validation particles, so its validation loss is
        optimistically low and every step away from it looks like a loss.
    checkpoint_path
        Where to write the checkpoint after every epoch (main process only); with
        ``config.resume``, training continues from it when it exists and belongs to ``tag``.
    tag
        Name of this run in the checkpoint (e.g. ``"half1"``).

    Returns
    -------
    TrainResult
    """
    config, context = _train_settings(config, context, options)
    run = _Training(particles, indices, model, loss_fn, penalty or NoPenalty(), config, context)
    run.start(init_volume, checkpoint_path, tag)
    bar = tqdm(
        total=config.epochs,
        initial=run.start_epoch - 1,
        desc=f"{config.optimizer} {tag}".strip(),
        unit="epoch",
        disable=not (config.progress and context.comm.is_main),
        leave=False,
    )
    try:
        for epoch in range(run.start_epoch, config.epochs + 1):
            if run.history["finished"]:
                break
            train_loss = run.epoch(epoch)
            val = run.score()
            run.record(epoch, train_loss, val)
            bar.update(1)
            bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val:.4g}")
            if checkpoint_path is not None and context.comm.is_main:
                run.save(Path(checkpoint_path), epoch, tag)
            if run.history["finished"]:
                break
    finally:
        bar.close()
    return run.result()


class _Training:
    """The state of one :func:`train` run: the volume, its optimiser, the history."""

    def __init__(self, particles, indices, model, loss_fn, penalty, config, context) -> None:
        self.particles, self.model = particles, model
        self.loss_fn, self.penalty = loss_fn, penalty
        self.config, self.context = config, context
        self.indices = indices
        self.train_idx, self.val_idx = split_validation(indices, config.val_fraction, config.seed)
        self.loader = batch_loader(
            particles,
            indices,
            device=context.device,
            dtype=context.dtype,
            use_ctf=context.use_ctf,
            cache=config.cache,
        )

    def start(self, init_volume, checkpoint_path, tag: str) -> None:
        """The starting volume and history: from the checkpoint (``resume``) or fresh."""
        self.tag = tag
        ctx, d = self.context, self.model.box_size
        volume = torch.zeros((d, d, d), device=ctx.device, dtype=ctx.dtype)
        if callable(init_volume) and not isinstance(init_volume, torch.Tensor):
            init_volume = init_volume(self.train_idx)
        if init_volume is not None:
            volume = init_volume.detach().to(device=ctx.device, dtype=ctx.dtype).clone()
        self.volume = volume.requires_grad_(True)
        self.optimizer = OPTIMIZERS[self.config.optimizer]([self.volume], lr=self.config.lr)
        state = None
        if self.config.resume and checkpoint_path is not None and Path(checkpoint_path).exists():
            state = torch.load(checkpoint_path, map_location=ctx.device, weights_only=False)
            if state.get("tag") != tag:
                state = None
        if state is not None:
            with torch.no_grad():
                self.volume.copy_(state["volume"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.best_volume = state["best_volume"].to(device=ctx.device, dtype=ctx.dtype)
            self.history = state["history"]
            self.start_epoch = int(state["epoch"]) + 1
            torch.set_rng_state(state["torch_rng"])
            logger.info("%s: resuming after epoch %d", tag or "train", self.start_epoch - 1)
            return
        v0 = self.score()
        self.history = {
            "train_loss": [float("nan")],
            "val_loss": [v0],
            "best_epoch": 0,
            "best_val": v0,
            "bad_epochs": 0,
            "stopped_early": False,
            "finished": False,
        }
        self.best_volume = self.volume.detach().clone()
        self.start_epoch = 1

    def score(self) -> float:
        """The validation loss of the current volume."""
        ctx = self.context
        return evaluate(
            self.model,
            self.volume.detach(),
            self.particles,
            self.val_idx,
            self.loss_fn,
            batch_size=self.config.batch_size,
            use_ctf=ctx.use_ctf,
            symmetry=ctx.symmetry,
            device=ctx.device,
            dtype=ctx.dtype,
            comm=ctx.comm,
            loader=self.loader,
        )

    def epoch(self, epoch: int) -> float:
        """One pass over the training particles; returns the mean training loss."""
        cfg, comm, volume = self.config, self.context.comm, self.volume
        d = self.model.box_size
        order = self.train_idx[epoch_permutation(len(self.train_idx), cfg.seed, epoch)]
        lr_epoch = cfg.learning_rate(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_epoch
        running = torch.zeros((), dtype=torch.float64, device=self.context.device)
        for global_batch in global_batches(order, cfg.batch_size):
            self.optimizer.zero_grad(set_to_none=False)
            local = comm.shard(global_batch)
            share = None
            if len(local):
                batch = self.loader(local)
                share = _batch_loss(
                    self.model,
                    volume,
                    batch,
                    self.loss_fn,
                    len(global_batch),
                    self.context.symmetry,
                    comm,
                    self.context.particle_weights,
                )
            if share is None:  # an empty shard still takes part in the loss's collectives
                empty = volume.new_zeros((0, d, d)) + 0.0 * volume.sum()
                total = self.loss_fn(empty, normalizer=len(global_batch), comm=comm)
            else:
                total = share
            if comm.is_main:
                total = total + self.penalty.smooth(volume)
            total.backward()
            comm.all_reduce_sum_(volume.grad)
            self.optimizer.step()
            self.penalty.prox_(volume.data, lr_epoch)
            if share is not None:
                running += share.detach().to(torch.float64) * len(global_batch)
        comm.all_reduce_sum_(running)
        return float(running) / max(1, len(self.train_idx))

    def record(self, epoch: int, train_loss: float, val: float) -> None:
        """Book-keeping after an epoch: best volume, early stopping, the log line."""
        history = self.history
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val)
        if val < history["best_val"] * (1 - 1e-6) or not np.isfinite(history["best_val"]):
            history["best_val"] = val
            history["best_epoch"] = epoch
            history["bad_epochs"] = 0
            self.best_volume = self.volume.detach().clone()
        else:
            history["bad_epochs"] += 1
        if history["bad_epochs"] >= self.config.patience:
            history["stopped_early"] = True
            history["finished"] = True
        if epoch == self.config.epochs:
            history["finished"] = True
        logger.info(
            "%s epoch %d: train %.6g, validation %.6g%s",
            self.tag or self.config.optimizer,
            epoch,
            train_loss,
            val,
            " (best)" if history["best_epoch"] == epoch else "",
        )

    def save(self, path: Path, epoch: int, tag: str) -> None:
        """Checkpoint after ``epoch``."""
        save_checkpoint(
            path,
            {
                "tag": tag,
                "epoch": epoch,
                "volume": self.volume.detach().cpu(),
                "best_volume": self.best_volume.cpu(),
                "optimizer": self.optimizer.state_dict(),
                "history": self.history,
                "torch_rng": torch.get_rng_state(),
            },
        )

    def result(self) -> TrainResult:
        history = self.history
        return TrainResult(
            volume=self.best_volume,
            last_volume=self.volume.detach().clone(),
            train_loss=list(history["train_loss"]),
            val_loss=list(history["val_loss"]),
            best_epoch=int(history["best_epoch"]),
            epochs_run=len(history["train_loss"]) - 1,
            stopped_early=bool(history["stopped_early"]),
        )
