"""The ``adam`` and ``sgd`` methods: :func:`cryograd.solvers.gradient.train` per half set.

Each half is fitted on its own (with its own validation split); the full map is the mean of the
two half maps. With ``init="direct"`` each half starts from the direct map of its *training*
particles only (:func:`cryograd.solvers.direct.direct_start`). The learning rate defaults to a
step on the map's scale (:func:`default_lr`); a loss with a data-dependent setting (Huber's
threshold) calibrates it on the starting map's residuals (:meth:`DataLoss.calibrate`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from cryograd.errors import CryogradError
from cryograd.forward import ForwardModel
from cryograd.solvers.batches import load_batch
from cryograd.solvers.config import GradientConfig
from cryograd.solvers.context import RunContext
from cryograd.solvers.direct import direct_start, reconstruct_direct
from cryograd.solvers.gradient import TrainConfig, split_validation, train
from cryograd.solvers.losses import DataLoss, make_loss
from cryograd.solvers.optimizers import OPTIMIZERS
from cryograd.solvers.penalties import make_penalty
from cryograd.solvers.registry import HalfMaps, register_solver

__all__ = ["GradientSolver", "default_lr", "start_residuals"]

logger = logging.getLogger(__name__)


def _make_loss(config: GradientConfig) -> DataLoss:
    try:
        return make_loss(
            config.loss,
            huber_delta=config.huber_delta,
            sequence=config.sorted_l1_sequence,
            q=config.sorted_l1_q,
        )
    except ValueError as exc:
        raise CryogradError(str(exc)) from None


class GradientSolver:
    """``adam`` / ``sgd``: minibatch optimisation per half (one instance per optimiser)."""

    config_type = GradientConfig

    def __init__(self, optimizer: str) -> None:
        self.name = optimizer

    def solve_halves(
        self,
        particles,
        halves: tuple[np.ndarray, np.ndarray],
        config: GradientConfig,
        context: RunContext,
        *,
        max_shell: int | None = None,
        progress: bool = True,
    ) -> HalfMaps:
        """The half maps and the full map (see :class:`~cryograd.solvers.registry.Solver`)."""
        try:
            penalty = make_penalty(
                config.penalty,
                config.lam or 0.0,
                sequence=config.sorted_l1_sequence,
                q=config.sorted_l1_q,
            )
        except ValueError as exc:
            raise CryogradError(str(exc)) from None
        _make_loss(config)  # reports a bad loss before any work
        model = ForwardModel(
            int(particles.box_size), particles.pixel_size_angstrom, config.projector, config.pad
        )
        out = HalfMaps(None, None, None)  # type: ignore[arg-type]  # set below
        run = _HalfRun(particles, config, context, model, max_shell, progress)
        maps = []
        t0 = time.perf_counter()
        for k, half in enumerate(halves, start=1):
            maps.append(run.fit(half, k, penalty, out.history))
        out.timings["train"] = time.perf_counter() - t0
        out.half1, out.half2, out.full = maps[0], maps[1], 0.5 * (maps[0] + maps[1])
        out.parameters["lr"] = run.lr
        return out


class _HalfRun:
    """What the two halves of one adam/sgd run share (the model, the learning rate once set)."""

    def __init__(self, particles, config, context, model, max_shell, progress) -> None:
        self.particles, self.config, self.context = particles, config, context
        self.model, self.max_shell, self.progress = model, max_shell, progress
        self.lr = config.lr

    def _start(self, indices: np.ndarray, progress: bool) -> torch.Tensor:
        cfg, ctx = self.config, self.context
        return direct_start(
            self.particles,
            indices,
            cfg.snr,
            progress,
            pad=cfg.pad,
            max_shell=self.max_shell,
            refine=cfg.refine,
            context=ctx,
        )

    def fit(self, half: np.ndarray, k: int, penalty, history: dict) -> torch.Tensor:
        """Train on half ``k``; records its history; returns its best map."""
        cfg, ctx, tag = self.config, self.context, f"half{k}"
        train_idx, _ = split_validation(half, cfg.val_fraction, cfg.seed + k)
        start = init_vol = None
        if cfg.init == "direct":
            # the start is made from the training particles only: one made from all of the
            # half has already fitted the validation particles (its validation loss is
            # optimistically low and every step looks like a loss)
            start = self._start(train_idx, self.progress)
            init_vol = self._memo_start(train_idx, start)
        if self.lr is None:
            self.lr = self._default_lr(half, start)
        loss_fn = _make_loss(cfg)
        if loss_fn.needs_calibration:
            self._calibrate(loss_fn, train_idx, start, tag, history)
        ckpt = None
        if cfg.checkpoint_dir is not None:
            ckpt = Path(cfg.checkpoint_dir) / f"checkpoint_{tag}.pt"
        res = train(
            self.particles,
            half,
            model=self.model,
            loss_fn=loss_fn,
            penalty=penalty,
            config=TrainConfig(
                optimizer=cfg.optimizer,
                epochs=cfg.epochs,
                lr=self.lr,
                batch_size=cfg.batch_size,
                val_fraction=cfg.val_fraction,
                seed=cfg.seed + k,
                patience=cfg.patience,
                lr_schedule=cfg.lr_schedule,
                resume=cfg.resume,
                progress=self.progress,
            ),
            context=ctx,
            init_volume=init_vol,
            checkpoint_path=ckpt,
            tag=tag,
        )
        history[tag] = {
            "train_loss": res.train_loss,
            "val_loss": res.val_loss,
            "best_epoch": res.best_epoch,
            "epochs_run": res.epochs_run,
            "stopped_early": res.stopped_early,
        }
        return res.volume

    def _memo_start(self, train_idx: np.ndarray, start: torch.Tensor):
        """``init_volume`` for :func:`train`: a function of the training indices that returns the
        start already made for exactly those particles (and makes it for any others)."""
        made = np.asarray(train_idx).copy()

        def init_volume(indices):
            if np.array_equal(np.asarray(indices), made):
                return start
            return self._start(indices, False)

        return init_volume

    def _default_lr(self, half: np.ndarray, start: torch.Tensor | None) -> float:
        cfg, ctx = self.config, self.context
        scale_map = start
        if scale_map is None and cfg.optimizer == "adam":
            # this scale map reads the user's snr as the Wiener term ρ = 1 / snr (as before; the
            # accuracy issue revisits it): only its standard deviation is used
            scale_map = reconstruct_direct(
                self.particles,
                half,
                wiener_rho=None if cfg.snr is None else 1.0 / cfg.snr,
                pad=cfg.pad,
                max_shell=self.max_shell,
                progress=False,
                context=ctx,
            )
        return default_lr(
            cfg.optimizer,
            scale_map,
            cfg.init,
            self.particles,
            half,
            self.model,
            ctx.use_ctf,
            ctx.device,
            ctx.dtype,
        )

    def _calibrate(self, loss_fn: DataLoss, train_idx, start, tag: str, history: dict) -> None:
        ctx = self.context
        residuals = start_residuals(
            self.particles, train_idx, self.model, start, ctx.use_ctf, ctx.device, ctx.dtype
        )
        chosen = loss_fn.calibrate(residuals)
        for key, value in chosen.items():
            history[f"{key}_{tag}"] = value
        logger.info("%s: %s calibrated on the start's residuals: %s", tag, loss_fn, chosen)


def start_residuals(particles, indices, model, start, use_ctf, device, dtype) -> torch.Tensor:
    """Residuals ``A x₀ − b`` of the starting map over (up to) the first 256 of ``indices`` (the
    images themselves, ``−b`` up to sign, from a zero start: ``start`` None)."""
    batch = load_batch(
        particles, np.asarray(indices)[:256], device=device, dtype=dtype, use_ctf=use_ctf
    )
    if start is None:
        return batch.images
    with torch.no_grad():  # the start is symmetric already: the particles' own poses suffice
        pred = model.project(
            start.to(device=device, dtype=dtype),
            batch.rotations,
            batch.shifts_px,
            batch.model_filter(),
            optics=batch.optics,
        )
        return pred - batch.images


def default_lr(method, scale_map, init, particles, half, model, use_ctf, device, dtype) -> float:
    """Adam: a step on the map's scale (``0.1 ·`` the direct map's standard deviation from zero,
    ``0.02 ·`` when refining the direct map). SGD: ``1/L`` of the first batch's ``(2/B) AᵀA``."""
    batch = load_batch(particles, half[:64], device=device, dtype=dtype, use_ctf=use_ctf)
    if method == "adam":
        std = float(scale_map.std()) if scale_map is not None else 0.0
        if std > 0:
            return (0.02 if init == "direct" else 0.1) * std
        rms = float(batch.images.square().mean().sqrt())
        return 0.05 * rms / model.box_size
    # SGD: step 1/L with L the largest eigenvalue of the batch's (2/B) AᵀA (power iteration)
    v = torch.randn(
        (model.box_size,) * 3,
        device=device,
        dtype=dtype,
        generator=torch.Generator(device=device).manual_seed(0),
    )
    filt = batch.model_filter()
    norm = 1.0
    for _ in range(8):
        v = v / v.norm()
        w = model.backproject(
            model.project(v, batch.rotations, batch.shifts_px, filt, optics=batch.optics),
            batch.rotations,
            batch.shifts_px,
            filt,
            optics=batch.optics,
        ) * (2.0 / len(batch))
        norm = float(w.norm())
        v = w
    return 1.0 / max(norm, 1e-12)


for _name in OPTIMIZERS:
    register_solver(GradientSolver(_name))
