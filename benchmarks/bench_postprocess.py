"""``cryograd postprocess`` beside ``relion_postprocess`` and ``relion_mask_create``.

Half maps: ``cryograd simulate`` from the shipped 64³ map and ``cryograd reconstruct --method
direct`` (or ``--half1/--half2``). Compared on the same half maps and the same mask:

- resolution (shells apart), B-factor (``--auto_bfac``), correlation of the sharpened masked maps
  inside the mask (cryograd's default low-pass at the resolution beside ``--low_pass -1``, and
  ``--low-pass 0`` beside RELION 3.1's default, no low-pass);
- ``--auto-mask`` against ``relion_mask_create`` with the same parameters (Dice of mask > 0.5);
- local resolution against ``relion_postprocess --locres`` on halves with extra noise in one
  half of the box (correlation inside the mask; windowed default and ``exact=True``);
- time of local resolution at box 256 (the noisy halves Fourier-padded to 256), cryograd and RELION
  one after the other on the same cores, and the correlation of the two local-resolution maps.

Prints a table; without RELION on PATH the RELION columns are skipped (and it says so).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np
import starfile
import torch

from cryograd.io.mrc import write_map
from cryograd.postprocess import LocresConfig, create_mask, local_resolution, postprocess
from cryograd.postprocess.run import PostprocessConfig

HERE = Path(__file__).resolve().parent
MAP = HERE.parent / "src" / "cryograd" / "data" / "emd_5168_64.mrc"


def sh(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def make_halves(work: Path, n: int) -> tuple[Path, Path]:
    py = [sys.executable, "-m", "cryograd"]
    sh(
        [*py, "simulate", str(MAP), "-n", str(n), "-o", str(work / "sim"), "--snr", "0.05"],
        work / "sim.log",
    )
    sh(
        [
            *py,
            "reconstruct",
            str(work / "sim" / "particles.star"),
            "-o",
            str(work / "rec"),
            "--method",
            "direct",
            "--no-progress",
        ],
        work / "rec.log",
    )
    return work / "rec" / "half1.mrc", work / "rec" / "half2.mrc"


def read(path) -> np.ndarray:
    return mrcfile.read(path).astype(np.float64)


def noisy_halves(h1, h2, sigma, seed=0):
    """Extra white noise of std ``sigma`` in the half of the box with x >= N/2."""
    rng = np.random.default_rng(seed)
    n = h1.shape[0]
    env = (np.arange(n) >= n // 2).astype(np.float64)[None, None, :]
    return (
        h1 + sigma * env * rng.standard_normal(h1.shape),
        h2 + sigma * env * rng.standard_normal(h2.shape),
    )


def fourier_pad(vol: np.ndarray, box: int) -> np.ndarray:
    n = vol.shape[0]
    spec = np.fft.fftshift(np.fft.fftn(vol))
    out = np.zeros((box,) * 3, dtype=complex)
    o = box // 2 - n // 2
    out[o : o + n, o : o + n, o : o + n] = spec
    return np.fft.ifftn(np.fft.ifftshift(out)).real * (box / n) ** 3


def relion_star(path: Path) -> dict:
    return starfile.read(path, always_dict=True)["general"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half1", type=Path)
    ap.add_argument("--half2", type=Path)
    ap.add_argument("--angpix", type=float, default=None)
    ap.add_argument("--particles", type=int, default=4000)
    ap.add_argument(
        "--threshold-fraction",
        type=float,
        default=0.15,
        help="auto-mask threshold as a fraction of the low-passed average's maximum",
    )
    ap.add_argument("--locres-box", type=int, default=256)
    ap.add_argument("--locres-sampling", type=float, default=40.0, help="Å, for the box-256 timing")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pp_"))
    work.mkdir(parents=True, exist_ok=True)
    have_relion = shutil.which("relion_postprocess") is not None
    if not have_relion:
        print("relion_postprocess not on PATH: RELION columns skipped")
    if args.half1 is None:
        f1, f2 = make_halves(work, args.particles)
    else:
        f1, f2 = args.half1, args.half2
    apix = args.angpix or float(mrcfile.open(f1, permissive=True).voxel_size.x)
    h1, h2 = read(f1), read(f2)
    n = h1.shape[0]
    rows: list[tuple[str, str, str, str]] = []
    # --- masks
    from cryograd.postprocess.filters import lowpass_map

    avg = 0.5 * (h1 + h2)
    thr = args.threshold_fraction * float(lowpass_map(torch.from_numpy(avg), 15.0, apix).max())
    t0 = time.perf_counter()
    mine_mask = create_mask(
        torch.from_numpy(avg), apix, thr, extend_px=3, soft_edge_px=6, lowpass_angstrom=15
    ).numpy()
    t_mask = time.perf_counter() - t0
    mask_file = work / "mask_cryograd.mrc"
    write_map(mask_file, mine_mask, apix)
    if have_relion:
        write_map(work / "avg.mrc", avg, apix)
        t_rmask = sh(
            [
                "relion_mask_create",
                "--i",
                str(work / "avg.mrc"),
                "--o",
                str(work / "mask_relion.mrc"),
                "--ini_threshold",
                f"{thr}",
                "--extend_inimask",
                "3",
                "--width_soft_edge",
                "6",
                "--lowpass",
                "15",
                "--angpix",
                f"{apix}",
            ],
            work / "mask.log",
        )
        rmask = read(work / "mask_relion.mrc")
        a, b = mine_mask > 0.5, rmask > 0.5
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        rows.append(
            (
                "auto-mask Dice vs relion_mask_create",
                f"{dice:.4f}",
                ">= 0.9",
                f"max |diff| {np.abs(mine_mask - rmask).max():.1e}; "
                f"{t_mask:.2f} s vs {t_rmask:.2f} s",
            )
        )
        mask_file = work / "mask_relion.mrc"
    mask = read(mask_file)
    # --- global post-processing, same mask
    t0 = time.perf_counter()
    res = postprocess(h1, h2, apix, mask=mask, config=PostprocessConfig())
    t_pp = time.perf_counter() - t0
    rows.append(
        (
            "cryograd resolution (interp. / shell) Å",
            f"{res.resolution_angstrom:.3f} / {res.resolution_shell_angstrom:.3f}",
            "",
            "",
        )
    )
    rows.append(("cryograd B-factor Å² (fit from 10 Å)", f"{res.bfactor_a2:.1f}", "", ""))
    if have_relion:
        out = work / "relion_pp"
        out.mkdir(exist_ok=True)
        relion_pp = [
            "relion_postprocess",
            "--i",
            str(f1),
            "--i2",
            str(f2),
            "--mask",
            str(mask_file),
            "--angpix",
            f"{apix}",
            "--auto_bfac",
            "--autob_lowres",
            "10",
        ]
        t_rpp = sh([*relion_pp, "--o", str(out / "postprocess")], work / "pp.log")
        sh([*relion_pp, "--low_pass", "-1", "--o", str(out / "lp")], work / "pp_lp.log")
        gen = relion_star(out / "postprocess.star")
        r_res, r_b = float(gen["rlnFinalResolution"]), float(gen["rlnBfactorUsedForSharpening"])
        shells = abs(n * apix / res.resolution_shell_angstrom - n * apix / r_res)
        rows.append(
            (
                "resolution vs RELION (shells apart)",
                f"{shells:.2f}",
                "<= 1",
                f"RELION {r_res:.3f} Å",
            )
        )
        rows.append(
            (
                "B-factor vs RELION (rel. diff)",
                f"{abs(res.bfactor_a2 - r_b) / abs(r_b):.3f}",
                "<= 0.20",
                f"RELION {r_b:.1f} Å²",
            )
        )
        sel = mask > 0.5
        res0 = postprocess(h1, h2, apix, mask=mask, config=PostprocessConfig(low_pass_angstrom=0))
        for name, mine, ref in (
            ("default (low-pass at resolution) vs --low_pass -1", res, out / "lp_masked.mrc"),
            ("--low-pass 0 vs RELION's default", res0, out / "postprocess_masked.mrc"),
        ):
            rm = read(ref)
            corr = np.corrcoef(mine.sharpened_masked.numpy()[sel], rm[sel])[0, 1]
            diff = np.abs(mine.sharpened_masked.numpy() - rm).max() / np.abs(rm).max()
            rows.append(
                (
                    f"sharpened masked corr. in mask, {name}",
                    f"{corr:.6f}",
                    ">= 0.95",
                    f"max |diff| / max {diff:.1e}; {t_pp:.2f} s vs {t_rpp:.2f} s",
                )
            )
    # --- local resolution accuracy (box n), extra noise on one side
    n1, n2 = noisy_halves(h1, h2, sigma=float(h1.std()))
    write_map(work / "loc_half1.mrc", n1, apix)
    write_map(work / "loc_half2.mrc", n2, apix)
    cfg = LocresConfig(bfactor_a2=-100.0, device="cpu")
    loc = local_resolution(n1, n2, apix, cfg)
    loc_exact = local_resolution(
        n1, n2, apix, LocresConfig(bfactor_a2=-100.0, exact=True, device="cpu")
    )
    if have_relion:
        out = work / "relion_loc"
        out.mkdir(exist_ok=True)
        sh(
            [
                "relion_postprocess",
                "--i",
                str(work / "loc_half1.mrc"),
                "--i2",
                str(work / "loc_half2.mrc"),
                "--angpix",
                f"{apix}",
                "--locres",
                "--adhoc_bfac",
                "-100",
                "--o",
                str(out / "relion"),
            ],
            work / "loc.log",
        )
        rl = read(out / "relion_locres.mrc")
        sel = mask > 0.5
        for name, lr in (("windowed", loc), ("exact", loc_exact)):
            c = np.corrcoef(lr.locres_angstrom.numpy()[sel], rl[sel])[0, 1]
            rows.append(
                (
                    f"locres corr. vs RELION in mask ({name})",
                    f"{c:.3f}",
                    ">= 0.8",
                    f"median {np.median(lr.locres_angstrom.numpy()[sel]):.2f} vs "
                    f"{np.median(rl[sel]):.2f} Å",
                )
            )
    # --- timing at box 256
    big = args.locres_box
    bapix = apix * n / big
    b1, b2 = (fourier_pad(v, big) for v in (n1, n2))
    write_map(work / "big_half1.mrc", b1, bapix)
    write_map(work / "big_half2.mrc", b2, bapix)
    bcfg = LocresConfig(sampling_angstrom=args.locres_sampling, bfactor_a2=-100.0, device="cpu")
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    bl = local_resolution(b1, b2, bapix, bcfg, progress=True)
    t_mine, cpu_mine = time.perf_counter() - t0, time.process_time() - c0
    note = (
        f"{len(bl.points)} points, crop {bl.crop_box}, {bl.n_full_box} on the full box, "
        f"{torch.get_num_threads()} torch threads, load {load:.1f}"
    )
    if have_relion:
        out = work / "relion_big"
        out.mkdir(exist_ok=True)
        note += f" / {os.getloadavg()[0]:.1f} (1-min load before each)"
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t_rel = sh(
            [
                "relion_postprocess",
                "--i",
                str(work / "big_half1.mrc"),
                "--i2",
                str(work / "big_half2.mrc"),
                "--angpix",
                f"{bapix}",
                "--locres",
                "--locres_sampling",
                f"{args.locres_sampling}",
                "--adhoc_bfac",
                "-100",
                "--o",
                str(out / "relion"),
            ],
            work / "big.log",
        )
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_rel = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        rl = read(out / "relion_locres.mrc")
        bm = fourier_pad(mask, big) > 0.5
        rows.append(
            (
                f"locres box {big}: wall s (cryograd / RELION)",
                f"{t_mine:.1f} / {t_rel:.1f}",
                ">= 5x",
                f"{t_rel / t_mine:.1f}x; {note}",
            )
        )
        rows.append(
            (
                f"locres box {big}: CPU s (cryograd / RELION)",
                f"{cpu_mine:.1f} / {cpu_rel:.1f}",
                "",
                f"{cpu_rel / cpu_mine:.1f}x (RELION runs one thread)",
            )
        )
        c = np.corrcoef(bl.locres_angstrom.numpy()[bm], rl[bm])[0, 1]
        rf = read(out / "relion_locres_filtered.mrc")
        cf = np.corrcoef(bl.filtered.numpy()[bm], rf[bm])[0, 1]
        rows.append(
            (
                f"locres box {big}: corr. vs RELION in mask",
                f"{c:.4f}",
                ">= 0.8",
                f"locres_filtered corr. {cf:.6f}",
            )
        )
    else:
        rows.append((f"locres box {big}: time s", f"{t_mine:.1f}", "", note))
    w = max(len(r[0]) for r in rows)
    print(f"\nhalf maps {f1}, {f2}: box {n}, {apix:.4f} Å/px; work folder {work}")
    print(f"{'measure':<{w}}  {'value':>16}  {'target':>8}  note")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>16}  {r[2]:>8}  {r[3]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
