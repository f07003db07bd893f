"""``postprocess``: masked FSC, sharpening and local resolution of two half maps, and the outputs.

The steps follow ``relion_postprocess`` 3.1 (``Postprocessing::run``): unmasked and masked FSC, the
masked FSC corrected by phase randomisation beyond the shell where the unmasked FSC drops below 0.8,
with RELION's own random numbers (:mod:`cryograd.postprocess.fsc`), the resolution at 0.143; then
the average of the unmasked halves is divided by the MTF, FSC-weighted, sharpened by a B-factor
(fitted on its Guinier plot, or given) and, unless ``low_pass_angstrom = 0``, low-passed (at the
resolution shell by default). See :mod:`cryograd.postprocess.sharpen`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cryograd.errors import CryogradError
from cryograd.postprocess.filters import lowpass_weights_at_shell, relion_round
from cryograd.postprocess.fsc import last_shell_above, relion_fsc_result
from cryograd.postprocess.locres import LocalResolution, LocresConfig, local_resolution
from cryograd.postprocess.sharpen import (
    MTF,
    GuinierCurve,
    GuinierFit,
    bfactor_weights,
    fit_guinier,
    fsc_weighting_weights,
    guinier_curve,
    mtf_weights,
)
from cryograd.validation import FSCResult, resolution_at

__all__ = ["PostprocessConfig", "PostprocessResult", "postprocess", "relion_resolution_shell"]


@dataclass(frozen=True)
class PostprocessConfig:
    """Settings of :func:`postprocess`.

    Attributes
    ----------
    bfactor
        ``"auto"`` (Guinier fit, RELION's ``--auto_bfac``) or a B-factor in Å² (RELION's sign:
        negative sharpens, as ``--adhoc_bfac``).
    fit_low_res_angstrom, fit_high_res_angstrom
        Range of the Guinier fit (``--autob_lowres`` 10 Å, ``--autob_highres`` 0). 0 (RELION's
        default): every shell up to Nyquist with an FSC-weighted amplitude, i.e. up to the last
        shell before the corrected FSC first drops below 1e-4 (usually a few shells past 0.143).
        ``None``: up to the resolution shell.
    mtf, mtf_pixel_size
        Detector MTF (:func:`cryograd.postprocess.sharpen.read_mtf`) and its pixel size in Å
        (default: the maps').
    fsc_weighting
        Weight by ``sqrt(2 FSC / (1 + FSC))`` (RELION's default).
    low_pass_angstrom
        Final low-pass (RELION's ``--low_pass``): negative (the default, -1): at the resolution
        shell; 0: none (RELION 3.1's default; the FSC weighting alone ends the spectrum); positive:
        at that resolution in Å.
    lowpass_edge_shells
        Width of the final low-pass's raised-cosine edge (``--filter_edge_width``, 2).
    seed
        ``srand`` seed of the phase randomisation (RELION's ``--random_seed``; 0, RELION's
        default, draws RELION's phases).
    force_mask
        Keep the corrected masked FSC even where the unmasked one reaches further (RELION's
        ``--force_mask``; otherwise the unmasked curve is used then, as RELION does).
    locres
        :class:`LocresConfig` to also compute local resolution, else ``None``.
    """

    bfactor: float | str = "auto"
    fit_low_res_angstrom: float = 10.0
    fit_high_res_angstrom: float | None = 0.0
    mtf: MTF | None = None
    mtf_pixel_size: float | None = None
    fsc_weighting: bool = True
    low_pass_angstrom: float = -1.0
    lowpass_edge_shells: int = 2
    seed: int = 0
    force_mask: bool = False
    locres: LocresConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.bfactor, str):
            if self.bfactor != "auto":
                raise CryogradError(f"bfactor must be 'auto' or a number, got {self.bfactor!r}")
        elif not math.isfinite(float(self.bfactor)):
            raise CryogradError(f"bfactor must be finite, got {self.bfactor}")
        if not self.fit_low_res_angstrom > 0:
            raise CryogradError(
                f"fit_low_res_angstrom must be positive, got {self.fit_low_res_angstrom}"
            )
        if not math.isfinite(float(self.low_pass_angstrom)):
            raise CryogradError(f"low_pass_angstrom must be finite, got {self.low_pass_angstrom}")
        if self.mtf_pixel_size is not None and not self.mtf_pixel_size > 0:
            raise CryogradError(f"mtf_pixel_size must be positive, got {self.mtf_pixel_size}")


@dataclass
class PostprocessResult:
    """Everything :func:`postprocess` computed.

    Attributes
    ----------
    fsc
        The FSC curves (:class:`cryograd.validation.FSCResult`).
    resolution_angstrom
        Resolution at FSC 0.143 (interpolated, :func:`cryograd.validation.resolution_at`).
    resolution_shell_angstrom
        RELION's ``rlnFinalResolution``: ``N · pixel_size / i`` of the last shell ``i`` before the
        final FSC first drops below 0.143; the map is low-passed there.
    bfactor_a2
        B-factor applied, Å² (negative sharpens).
    guinier_fit
        The fit when ``bfactor="auto"``.
    guinier
        Guinier curves: ``"original"``, ``"mtf_corrected"`` (with an MTF), ``"weighted"``,
        ``"sharpened"``.
    sharpened, sharpened_masked
        ``(N, N, N)`` sharpened map, and times the mask (``None`` without one).
    mask
        ``(N, N, N)`` mask used, or ``None``.
    locres
        :class:`LocalResolution` or ``None``.
    """

    pixel_size: float
    fsc: FSCResult
    resolution_angstrom: float
    resolution_shell_angstrom: float
    bfactor_a2: float
    guinier_fit: GuinierFit | None
    guinier: dict[str, GuinierCurve]
    sharpened: torch.Tensor
    sharpened_masked: torch.Tensor | None
    mask: torch.Tensor | None
    locres: LocalResolution | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (curves as lists; ``inf`` becomes ``None``)."""

        def num(x):
            return None if x is None or not math.isfinite(x) else float(x)

        out = {
            "box_size": int(self.sharpened.shape[0]),
            "pixel_size_angstrom": self.pixel_size,
            "resolution_angstrom": num(self.resolution_angstrom),
            "resolution_shell_angstrom": num(self.resolution_shell_angstrom),
            "bfactor_a2": float(self.bfactor_a2),
            "masked": self.mask is not None,
            "used_unmasked_fsc": bool(self.fsc.extra.get("used_unmasked", False)),
            "fsc": self.fsc.to_dict(),
            "guinier": {
                "inv_resolution_squared_a2": [
                    float(x) for x in self.guinier["original"].inv_resolution_squared_a2
                ],
                **{k: [num(float(y)) for y in c.log_amplitude] for k, c in self.guinier.items()},
            },
        }
        if self.guinier_fit is not None:
            g = self.guinier_fit
            out["guinier_fit"] = {
                "slope_a2": g.slope_a2,
                "intercept": g.intercept,
                "correlation": g.correlation,
                "low_res_angstrom": g.low_res_angstrom,
                "high_res_angstrom": g.high_res_angstrom,
                "n_points": g.n_points,
            }
        if self.locres is not None:
            vals = self.locres.locres_angstrom
            sel = vals[self.mask > 0.5] if self.mask is not None else vals[vals > 0]
            q = np.percentile(sel.numpy(), [5, 25, 50, 75, 95]) if sel.numel() else [math.nan] * 5
            out["locres"] = {
                "n_points": int(len(self.locres.points)),
                "crop_box": int(self.locres.crop_box),
                "n_points_full_box": int(self.locres.n_full_box),
                "percentiles_angstrom": dict(
                    zip(["p5", "p25", "p50", "p75", "p95"], [num(float(x)) for x in q])
                ),
            }
        return out


def relion_resolution_shell(fsc_curve) -> int:
    """Last shell ``i`` before the curve first drops below 0.143 (0 when shell 0 does)."""
    return last_shell_above(torch.as_tensor(np.asarray(fsc_curve, dtype=np.float64)), 0.143)


def _lowpass_shell(cfg: PostprocessConfig, box: int, pixel_size: float, shell: int) -> int | None:
    """Shell of the final low-pass (``None``: none), as RELION's ``lowPassFilterMap`` rounds it."""
    if cfg.low_pass_angstrom == 0:
        return None
    if cfg.low_pass_angstrom < 0:
        return max(shell, 1)
    return relion_round(box * pixel_size / cfg.low_pass_angstrom)


def _sharpen(
    avg: torch.Tensor, fsc_final: np.ndarray, pixel_size: float, shell: int, cfg: PostprocessConfig
) -> tuple[torch.Tensor, float, GuinierFit | None, dict[str, GuinierCurve]]:
    """Steps of ``Postprocessing::sharpenMap``; returns (map, B, fit, Guinier curves)."""
    box = avg.shape[0]
    spec = torch.fft.rfftn(avg)  # radial filters: no centring needed
    curves = {"original": guinier_curve(spec, pixel_size)}
    if cfg.mtf is not None:
        spec = spec * mtf_weights(cfg.mtf, box, pixel_size, cfg.mtf_pixel_size)
        curves["mtf_corrected"] = guinier_curve(spec, pixel_size)
    if cfg.fsc_weighting:
        spec = spec * fsc_weighting_weights(fsc_final, box)
    curves["weighted"] = guinier_curve(spec, pixel_size)
    fit = None
    if cfg.bfactor == "auto":
        high = cfg.fit_high_res_angstrom
        if high is None:
            high = box * pixel_size / max(shell, 1)
        fit = fit_guinier(
            curves["weighted"], low_res_angstrom=cfg.fit_low_res_angstrom, high_res_angstrom=high
        )
        bfac = fit.bfactor_a2
    else:
        bfac = float(cfg.bfactor)
    if bfac != 0.0:
        spec = spec * bfactor_weights(box, bfac, pixel_size)
    curves["sharpened"] = guinier_curve(spec, pixel_size)
    lp = _lowpass_shell(cfg, box, pixel_size, shell)
    if lp is not None:
        spec = spec * lowpass_weights_at_shell(box, lp, edge_width_shells=cfg.lowpass_edge_shells)
    return torch.fft.irfftn(spec, s=(box,) * 3), bfac, fit, curves


def postprocess(
    half1,
    half2,
    pixel_size: float,
    *,
    mask=None,
    config: PostprocessConfig | None = None,
    progress: bool = False,
) -> PostprocessResult:
    """Post-process two half maps as ``relion_postprocess`` does (see the module notes).

    Parameters
    ----------
    half1, half2
        ``(N, N, N)`` unfiltered half maps.
    pixel_size
        Å per pixel.
    mask
        ``(N, N, N)`` soft mask in ``[0, 1]`` (e.g. :func:`cryograd.postprocess.masks.create_mask`)
        or ``None`` (unmasked FSC only).
    config
        :class:`PostprocessConfig`.
    progress
        Show progress bars (local resolution).

    Returns
    -------
    PostprocessResult
    """
    cfg = config or PostprocessConfig()
    v1 = torch.as_tensor(half1).to(torch.float64)
    v2 = torch.as_tensor(half2).to(torch.float64)
    if v1.ndim != 3 or len(set(v1.shape)) != 1:
        raise CryogradError(f"half1 must be a cubic (N, N, N) map, got shape {tuple(v1.shape)}")
    if v2.shape != v1.shape:
        raise CryogradError(f"half2 has shape {tuple(v2.shape)}, half1 {tuple(v1.shape)}")
    m = None if mask is None else torch.as_tensor(mask).to(torch.float64)
    if m is not None and m.shape != v1.shape:
        raise CryogradError(f"mask has shape {tuple(m.shape)}, the half maps {tuple(v1.shape)}")
    box = v1.shape[0]
    fsc = relion_fsc_result(v1, v2, pixel_size, m, seed=cfg.seed, force_mask=cfg.force_mask)
    shell = relion_resolution_shell(fsc.fsc_final)
    res_shell = box * pixel_size / shell if shell > 0 else math.inf
    avg = 0.5 * (v1 + v2)
    sharpened, bfac, fit, curves = _sharpen(avg, fsc.fsc_final, pixel_size, shell, cfg)
    loc = None
    if cfg.locres is not None:
        loc = local_resolution(v1, v2, pixel_size, cfg.locres, progress=progress)
    return PostprocessResult(
        pixel_size=float(pixel_size),
        fsc=fsc,
        resolution_angstrom=resolution_at(fsc.fsc_final, 0.143, box, pixel_size),
        resolution_shell_angstrom=res_shell,
        bfactor_a2=bfac,
        guinier_fit=fit,
        guinier=curves,
        sharpened=sharpened,
        sharpened_masked=None if m is None else sharpened * m,
        mask=m,
        locres=loc,
    )
