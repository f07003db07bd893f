"""Validated, frozen settings of each solver.

One dataclass per solver, validated once when it is made (``__post_init__``). Errors name the
parameter (``val_fraction must be in (0, 0.5), got 0.6``); the command line turns parameter names
into its flags (:data:`cryograd.cli.reconstruct.PARAMETER_FLAGS`).

:func:`wiener_rho` is the one place where the user-facing ``snr`` becomes the Wiener term ``ρ``
of the division ``N / (W + ρ)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from cryograd.errors import CryogradError
from cryograd.solvers.losses import LAMBDA_KINDS, LOSSES
from cryograd.solvers.optimizers import OPTIMIZERS
from cryograd.solvers.penalties import PENALTIES

__all__ = [
    "SolverConfig",
    "DirectConfig",
    "CGConfig",
    "GradientConfig",
    "INITS",
    "LR_SCHEDULES",
    "wiener_rho",
    "check_positive",
    "check_at_least",
    "check_choice",
    "check_non_negative",
    "check_val_fraction",
]

INITS = ("direct", "zero")
DEFAULT_BATCH_SIZE = 128
"""Particles per global batch of adam/sgd when none is given."""
LR_SCHEDULES = ("constant", "cosine")


def check_positive(name: str, value: float | None) -> None:
    """Raise unless ``value`` is None or a finite number > 0."""
    if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
        raise CryogradError(f"{name} must be a positive number, got {value}")


def check_non_negative(name: str, value: float | None) -> None:
    """Raise unless ``value`` is None or a finite number >= 0."""
    if value is not None and not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise CryogradError(f"{name} must be a non-negative number, got {value}")


def check_at_least(name: str, value: int | None, low: int) -> None:
    """Raise unless ``value`` is None or an integer >= ``low``."""
    if value is not None and not (_is_number(value) and int(value) == value and value >= low):
        raise CryogradError(f"{name} must be an integer of at least {low}, got {value}")


def check_choice(name: str, value: str, choices) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise CryogradError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_val_fraction(value: float) -> None:
    """The held-out fraction of the iterative methods: in (0, 0.5)."""
    if not (_is_number(value) and 0.0 < value < 0.5):
        raise CryogradError(f"val_fraction must be in (0, 0.5), got {value}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def wiener_rho(snr: float, box_size: int, padded: int) -> float:
    """The constant Wiener term ``ρ = (D / P)³ / snr`` of a user-facing ``snr``.

    ``snr`` is the signal-to-noise power ratio per Fourier voxel of the unpadded ``D`` grid;
    ``ρ`` is in the units of the insertion weights ``W`` on the padded ``P`` grid.
    """
    return (box_size / padded) ** 3 / float(snr)


@dataclass(frozen=True)
class SolverConfig:
    """Settings every solver shares.

    Attributes
    ----------
    projector
        Forward model of the iterative methods (``"fourier"`` or ``"real"``).
    pad
        Padding factor of the Fourier grids.
    batch_size
        Particles per global batch (None: the solver's default).
    seed
        Seed of the half-set split, the validation split and the shuffles.
    snr
        Constant Wiener SNR per Fourier voxel of the ``D`` grid (:func:`wiener_rho`), or None.
    lam
        Regulariser ``λ`` of ``(AᵀA + λI) x = Aᵀb`` (direct, cg) or the penalty weight (adam, sgd).
    """

    projector: str = "fourier"
    pad: float = 2.0
    batch_size: int | None = None
    seed: int = 0
    snr: float | None = None
    lam: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def recorded(self) -> dict:
        """Settings of this method recorded in ``run.json`` beside the common ones."""
        return {}

    def validate(self) -> None:
        """Check every field; raise :class:`CryogradError` naming the parameter."""
        check_choice("projector", self.projector, ("fourier", "real"))
        check_positive("pad", self.pad)
        check_at_least("batch_size", self.batch_size, 1)
        check_positive("snr", self.snr)
        check_non_negative("lam", self.lam)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of the settings of this config."""
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class DirectConfig(SolverConfig):
    """``direct``: Fourier insertion and Wiener division.

    Attributes
    ----------
    refine
        Preconditioned CG iterations in the sphere inscribed in the box after the division
        (0, the default: the plain division, its mean set from the data).
    """

    refine: int = 0

    def validate(self) -> None:
        super().validate()
        check_at_least("refine", self.refine, 0)


@dataclass(frozen=True)
class CGConfig(SolverConfig):
    """``cg``: conjugate gradients on ``(AᵀA + λI) x = Aᵀb``.

    Attributes
    ----------
    tol
        Relative-residual tolerance.
    max_iter
        Iteration limit.
    """

    tol: float = 1e-5
    max_iter: int = 200

    def validate(self) -> None:
        super().validate()
        check_non_negative("tol", self.tol)
        check_at_least("max_iter", self.max_iter, 1)


@dataclass(frozen=True)
class GradientConfig(SolverConfig):
    """``adam`` / ``sgd``: minibatch optimisation with validation and early stopping.

    Attributes
    ----------
    optimizer
        ``"adam"`` or ``"sgd"`` (:data:`cryograd.solvers.optimizers.OPTIMIZERS`).
    epochs, lr, patience
        Passes over the training particles, learning rate (None: automatic), epochs without a
        lower validation loss before stopping.
    loss, penalty
        Names in :data:`cryograd.solvers.losses.LOSSES` / :data:`...penalties.PENALTIES`.
    sorted_l1_sequence, sorted_l1_q
        ``λ`` sequence of the sorted-l1 loss or penalty and the ``q`` of its BH form.
    huber_delta
        Huber threshold in image intensity units (None: the loss calibrates it).
    val_fraction
        Held-out fraction, in (0, 0.5).
    init
        ``"direct"`` (the direct map of the training particles) or ``"zero"``.
    lr_schedule
        ``"constant"`` or ``"cosine"``.
    refine
        CG refinement of the ``direct`` start (as :class:`DirectConfig`).
    checkpoint_dir, resume
        Where to checkpoint after every epoch, and whether to continue from there.
    """

    optimizer: str = "adam"
    epochs: int = 10
    lr: float | None = None
    loss: str = "l2"
    penalty: str = "none"
    sorted_l1_sequence: str = "bh"
    sorted_l1_q: float = 0.1
    huber_delta: float | None = None
    val_fraction: float = 0.05
    patience: int = 3
    init: str = "direct"
    lr_schedule: str = "constant"
    refine: int = 0
    checkpoint_dir: str | Path | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", DEFAULT_BATCH_SIZE)
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        check_choice("optimizer", self.optimizer, tuple(OPTIMIZERS))
        check_at_least("epochs", self.epochs, 1)
        check_at_least("patience", self.patience, 1)
        check_at_least("refine", self.refine, 0)
        check_positive("lr", self.lr)
        check_positive("huber_delta", self.huber_delta)
        check_choice("loss", self.loss, tuple(LOSSES))
        check_choice("penalty", self.penalty, tuple(PENALTIES))
        check_choice("sorted_l1_sequence", self.sorted_l1_sequence, LAMBDA_KINDS)
        if not (_is_number(self.sorted_l1_q) and 0.0 < self.sorted_l1_q < 1.0):
            raise CryogradError(f"sorted_l1_q must be in (0, 1), got {self.sorted_l1_q}")
        check_val_fraction(self.val_fraction)
        check_choice("init", self.init, INITS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)

    def recorded(self) -> dict:
        return dict(
            epochs=self.epochs,
            lr=self.lr,
            loss=self.loss,
            penalty=self.penalty,
            init=self.init,
            lr_schedule=self.lr_schedule,
            val_fraction=self.val_fraction,
            patience=self.patience,
        )
