"""``cryograd fsc A.mrc B.mrc``: FSC of two maps and the resolution at FSC 0.143 and 0.5."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from cryograd.errors import CryogradError
from cryograd.io.mrc import read_map
from cryograd.plots import plot_fsc_result
from cryograd.validation import compute_fsc_result


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fsc",
        help="FSC of two maps and the resolution at 0.143 and 0.5",
        description=(
            "Fourier shell correlation of two maps (e.g. half maps) and the resolution where it "
            "drops below 0.143 and 0.5. With --mask the masked FSC is corrected by phase "
            "randomisation as RELION's post-processing does, and the resolutions come from the "
            "corrected curve. A curve that never drops below a threshold reports Nyquist "
            "(2 × pixel size)."
        ),
    )
    parser.add_argument("map1", type=Path, metavar="A.mrc")
    parser.add_argument("map2", type=Path, metavar="B.mrc")
    parser.add_argument(
        "--mask", type=Path, metavar="FILE", help="soft mask (same box as the maps)"
    )
    parser.add_argument("--plot", type=Path, metavar="PNG", help="write the FSC plot here")
    parser.add_argument("--csv", type=Path, metavar="CSV", help="write the FSC curves here")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--angpix", type=float, help="pixel size in Å (overrides the headers)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the phase randomisation")
    parser.set_defaults(func=run)
    return parser


def _load_cubic(path: Path, what: str):
    m = read_map(path)
    if m.data.ndim != 3 or len(set(m.data.shape)) != 1:
        raise CryogradError(f"{path}: {what} must be a cubic 3D map, got shape {m.data.shape}")
    return m


def run(args) -> int:
    m1 = _load_cubic(args.map1, "map")
    m2 = _load_cubic(args.map2, "map")
    if m1.data.shape != m2.data.shape:
        raise CryogradError(
            f"{args.map2}: box {m2.data.shape} differs from {args.map1}'s box {m1.data.shape}"
        )
    mask = None
    if args.mask is not None:
        mk = _load_cubic(args.mask, "mask")
        if mk.data.shape != m1.data.shape:
            raise CryogradError(
                f"{args.mask}: mask box {mk.data.shape} differs from the maps' box {m1.data.shape}"
            )
        if mk.data.min() < -1e-3 or mk.data.max() > 1 + 1e-3:
            raise CryogradError(
                f"{args.mask}: mask values must lie in [0, 1], found "
                f"[{mk.data.min():.3g}, {mk.data.max():.3g}]"
            )
        if not np.any(mk.data > 0):
            raise CryogradError(f"{args.mask}: mask is empty (all zero)")
        mask = torch.from_numpy(mk.data.astype(np.float64))
    if args.angpix is not None:
        if not args.angpix > 0:
            raise CryogradError(f"--angpix must be positive, got {args.angpix}")
        apix = float(args.angpix)
    else:
        a1, a2 = m1.voxel_size_angstrom, m2.voxel_size_angstrom
        if not (a1 and a1 > 0):
            raise CryogradError(f"{args.map1}: header has no voxel size; give --angpix")
        if a2 and a2 > 0 and abs(a1 - a2) > 1e-3 * a1:
            raise CryogradError(
                f"{args.map2}: voxel size {a2:.4f} Å differs from {args.map1}'s {a1:.4f} Å "
                "(give --angpix to override)"
            )
        apix = float(a1)
    v1 = torch.from_numpy(m1.data.astype(np.float64))
    v2 = torch.from_numpy(m2.data.astype(np.float64))
    result = compute_fsc_result(v1, v2, apix, mask=mask, seed=args.seed)
    if args.csv is not None:
        result.to_csv(args.csv)
    if args.plot is not None:
        plot_fsc_result(args.plot, result, title=f"{args.map1.name} vs {args.map2.name}")

    def fmt(x: float) -> str:
        return "inf" if not math.isfinite(x) else f"{x:.2f}"

    if args.json:
        out = {
            "map1": str(args.map1),
            "map2": str(args.map2),
            "mask": None if args.mask is None else str(args.mask),
            "box_size": int(m1.data.shape[0]),
            "pixel_size_angstrom": apix,
            **result.to_dict(),
        }
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        curve = "corrected masked FSC" if mask is not None else "unmasked FSC"
        print(f"box {m1.data.shape[0]}, pixel {apix:.4f} A, {curve}")
        print(f"resolution at FSC 0.143: {fmt(result.resolution_143_angstrom)} A")
        print(f"resolution at FSC 0.5:   {fmt(result.resolution_05_angstrom)} A")
    return 0
