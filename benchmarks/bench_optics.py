"""Benchmark of RELION's optics in cryograd (issue 13; not a test).

Parts (``--part``, default all that the machine can run):

``phases``
    Time of the per-particle optics factors on one batch: the odd phase (beam tilt + odd Zernike,
    magnified) and its unit-modulus factor, and the even-Zernike CTF offset, for ``--batch``
    particles of box ``--box`` on ``--device``.
``invariance``
    A beam tilt is a unit-modulus factor on each spectrum, so a set whose images carry it (and
    whose STAR says so) must reconstruct to the same map as the clean set. Simulates ``--n``
    particles with ``relion_project --ctf`` (the package's 64³ map), multiplies every spectrum by
    ``exp(+iφ)`` of ``--beam-tilt`` (and ``--odd`` Zernike), writes the STAR with the columns, and
    reports the FSC between the clean and the aberrated map for ``relion_reconstruct`` and for
    ``cryograd reconstruct --method direct``. Target: ≥ 0.99 in every shell (RELION: 0.9993).
``even``
    ``relion_project --ctf`` applies ``rlnEvenZernike`` in its CTF: simulates a set with a 4-fold
    astigmatism (``--even``) and reports, for each tool, the FSC of its map to the truth and to the
    other tool's map. Targets: FSC(cryograd, RELION) ≥ 0.95 to the data's resolution; cryograd's
    mean FSC to the truth within 0.005 of its value on the clean set.

``ewald``
    ``relion_reconstruct --ewald`` beside ``cryograd reconstruct --ewald`` (same
    ``--mask-diameter``, ``--sectors``) on one ``relion_project`` set: FSC between the two
    Ewald maps to the data's resolution, beside the same between the two tools' plain maps,
    and how far each tool's Ewald map moved from its plain one.
``accuracy``
    Sets made by ``cryograd simulate`` with its optics flags (``relion_project`` applies a mag
    matrix to its CTF but not to its projection geometry, and no beam tilt): a beam tilt, a 4-fold
    astigmatism (even Zernike), a 2 % anisotropic magnification and two optics groups of different
    pixel size, each beside the clean set of the same seed (same poses, CTFs, noise). Each set is
    reconstructed by ``relion_reconstruct --ctf`` and ``cryograd reconstruct --method direct``;
    the table gives FSC(cryograd, RELION) (its minimum over the shells where cryograd's FSC to the
    truth is above 0.5, "to the data's resolution"; over the whole box, and with both maps inside
    the ball of radius ``D / 2`` outside which ``relion_reconstruct`` sets its map constant),
    each tool's mean FSC to the truth (shells 1 .. Nyquist) and cryograd's change against its
    clean set. Targets: ≥ 0.95 and within 0.005.

``boxes``
    Optics groups of different box sizes (resampled onto the first group's box,
    ``cryograd.optics.rescale``): ``cryograd simulate`` of the package map at box 64, of the same
    map Fourier-padded to box 80 at 0.8 × the pixel (same field of view) and zero-padded to box 96
    (1.5 × the field of view), each ``--n`` particles at ``--snr``; STAR files merging the box-64
    set with a second box-64 set (the like-for-like baseline), with the box-80 set and with the
    box-96 set, each reconstructed by both tools; the same columns as ``accuracy``.

Usage::

    python benchmarks/bench_optics.py --part phases --box 256 --batch 512 --device cuda
    python benchmarks/bench_optics.py --part invariance --n 2000 --noise 2.0
    python benchmarks/bench_optics.py --part even --n 2000
    python benchmarks/bench_optics.py --part accuracy --n 3000 --snr 0.1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from cryograd.optics import (  # noqa: E402
    aberration_factor,
    even_aberration_phase,
    mag_matrix,
    odd_aberration_phase,
)

KV, CS, Q0 = 300.0, 2.7, 0.1


def wavelength(kv: float = KV) -> float:
    v = kv * 1e3
    return 12.2643247 / math.sqrt(v * (1.0 + 0.978466e-6 * v))


def half_grid(n: int, pixel: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    ky = torch.fft.fftfreq(n, d=pixel, device=device, dtype=dtype)
    kx = torch.fft.rfftfreq(n, d=pixel, device=device, dtype=dtype)
    return torch.meshgrid(ky, kx, indexing="ij")[::-1]


def bench_phases(args) -> dict:
    dev = torch.device(args.device)
    dtype = torch.float32
    kx, ky = half_grid(args.box, 1.0, dev, dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    tx, ty = (torch.randn(args.batch, generator=g).to(dev, dtype) for _ in range(2))
    odd = torch.randn(args.batch, 6, generator=g).to(dev, dtype)
    even = torch.randn(args.batch, 9, generator=g).to(dev, dtype)
    mags = mag_matrix(1.01, 0.005, -0.003, 0.99, dtype=dtype, device=dev)
    spectra = torch.randn(
        args.batch, args.box, args.box // 2 + 1, dtype=torch.complex64, device=dev
    )

    def step():
        ph = odd_aberration_phase(kx, ky, odd, (tx, ty), CS, wavelength(), mags)
        out = spectra * aberration_factor(ph)
        return out, even_aberration_phase(kx, ky, even, mags)

    for _ in range(2):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0, reps = time.perf_counter(), 5
    for _ in range(reps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / reps * 1e3
    return {
        "part": "phases",
        "box": args.box,
        "batch": args.batch,
        "device": str(dev),
        "ms_per_batch": ms,
    }


def _write_star(
    path: Path, stack: Path, rows: np.ndarray, box: int, pixel: float, extra: dict
) -> None:
    optics = {
        "rlnOpticsGroup": "1",
        "rlnOpticsGroupName": "og1",
        "rlnAmplitudeContrast": str(Q0),
        "rlnSphericalAberration": str(CS),
        "rlnVoltage": str(KV),
        "rlnImagePixelSize": str(pixel),
        "rlnImageSize": str(box),
        "rlnImageDimensionality": "2",
        "rlnCtfDataAreCtfPremultiplied": "0",
        **extra,
    }
    labels = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    labels += ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup", "rlnRandomSubset"]
    labels += ["rlnImageName"]
    lines = ["", "# version 30001", "", "data_optics", "", "loop_"]
    lines += [f"_{k} #{i + 1}" for i, k in enumerate(optics)] + [" ".join(optics.values()), "", ""]
    lines += ["# version 30001", "", "data_particles", "", "loop_"]
    lines += [f"_{k} #{i + 1}" for i, k in enumerate(labels)]
    for i, r in enumerate(rows):
        vals = " ".join(f"{v:.6f}" for v in r[:8])
        lines.append(f"{vals} 1 {1 + i % 2} {i + 1:06d}@{stack.name}")
    path.write_text("\n".join(lines) + "\n")


def _run(cmd: list, cwd: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {done.stderr[-2000:]}")


def _simulate(work: Path, n: int, noise: float, extra: dict, seed: int = 0) -> tuple:
    """relion_project --ctf of the package map at random poses: (stack, rows, box, pixel)."""
    import mrcfile

    src = HERE.parent / "src" / "cryograd" / "data" / "emd_5168_64.mrc"
    shutil.copy(src, work / "truth.mrc")
    with mrcfile.open(src) as m:
        box, pixel = int(m.data.shape[-1]), float(m.voxel_size.x)
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, 8))
    rows[:, 0] = rng.uniform(-180, 180, n)
    rows[:, 1] = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    rows[:, 2] = rng.uniform(-180, 180, n)
    rows[:, 5] = rng.uniform(8000, 25000, n)
    rows[:, 6] = rows[:, 5] - rng.uniform(0, 800, n)
    rows[:, 7] = rng.uniform(0, 180, n)
    _write_star(work / "poses.star", work / "unused.mrcs", rows, box, pixel, extra)
    cmd = ["relion_project", "--i", "truth.mrc", "--o", "sim", "--ang", "poses.star", "--ctf"]
    if noise > 0:
        cmd += ["--add_noise", "--white_noise", str(noise)]
    _run(cmd, work)
    return work / "sim.mrcs", rows, box, pixel


def _modulate(stack: Path, out: Path, phase: torch.Tensor) -> None:
    import mrcfile

    imgs = torch.from_numpy(mrcfile.read(stack).astype(np.float64))
    n = imgs.shape[-1]
    spec = torch.fft.rfft2(torch.fft.ifftshift(imgs, dim=(-2, -1))) * aberration_factor(phase)
    res = (
        torch.fft.fftshift(torch.fft.irfft2(spec, s=(n, n)), dim=(-2, -1))
        .numpy()
        .astype(np.float32)
    )
    with mrcfile.new(out, overwrite=True) as m:
        m.set_data(res)
        m.set_image_stack()


def _fsc(a: Path, b: Path, *, in_sphere: bool = False) -> list[float]:
    """FSC of two MRC maps; ``in_sphere``: both multiplied by the ball of radius ``D / 2`` (1-voxel
    linear edge), the support of ``relion_reconstruct``'s map (it sets the rest to a constant)."""
    import mrcfile

    from cryograd.validation import fsc

    va, vb = (torch.from_numpy(mrcfile.read(p).astype(np.float64)) for p in (a, b))
    if in_sphere:
        n = va.shape[-1]
        k = torch.arange(n, dtype=torch.float64) - n // 2
        r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
        ball = torch.clamp(n / 2 - r, 0.0, 1.0)
        va, vb = va * ball, vb * ball
    return [float(v) for v in fsc(va, vb)]


def _reconstruct_both(
    work: Path, star: Path, tag: str, relion_extra=(), cryograd_extra=()
) -> dict[str, Path]:
    cmd = ["relion_reconstruct", "--i", star.name, "--o", f"relion_{tag}.mrc", "--ctf"]
    _run([*cmd, *relion_extra], work)
    out = work / f"cg_{tag}"
    _run(
        [
            sys.executable,
            "-m",
            "cryograd",
            "reconstruct",
            star.name,
            "-o",
            out,
            "--method",
            "direct",
            "--force",
            "--no-progress",
            "--device",
            "cpu",
            *cryograd_extra,
        ],
        work,
    )
    halves = _half_average(out)
    return {"relion": work / f"relion_{tag}.mrc", "cryograd": out / "map.mrc", "halves": halves}


def _half_average(out: Path) -> Path:
    """``(half1 + half2) / 2`` of a cryograd run: its unfiltered map of all the data (what
    ``relion_reconstruct`` makes; ``map.mrc`` is FSC-weighted and locally filtered)."""
    import mrcfile

    h1, h2 = (mrcfile.read(out / f"half{i}.mrc").astype(np.float32) for i in (1, 2))
    path = out / "halves_mean.mrc"
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(0.5 * (h1 + h2))
    return path


def bench_invariance(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stack, rows, box, pixel = _simulate(work, args.n, args.noise, {})
        kx, ky = half_grid(box, pixel, "cpu", torch.float64)
        odd = torch.tensor(args.odd, dtype=torch.float64) if args.odd else None
        phase = odd_aberration_phase(kx, ky, odd, tuple(args.beam_tilt), CS, wavelength())
        _modulate(stack, work / "tilted.mrcs", phase)
        cols = {"rlnBeamTiltX": str(args.beam_tilt[0]), "rlnBeamTiltY": str(args.beam_tilt[1])}
        if args.odd:
            cols["rlnOddZernike"] = "[" + ",".join(str(v) for v in args.odd) + "]"
        _write_star(work / "clean.star", stack, rows, box, pixel, {})
        _write_star(work / "tilted.star", work / "tilted.mrcs", rows, box, pixel, cols)
        clean, tilted = (
            _reconstruct_both(work, work / "clean.star", "clean"),
            _reconstruct_both(work, work / "tilted.star", "tilted"),
        )
        out = {"part": "invariance", "n": args.n, "beam_tilt_mrad": args.beam_tilt, "odd": args.odd}
        for tool in ("relion", "cryograd"):
            curve = _fsc(clean[tool], tilted[tool])
            out[f"{tool}_fsc_clean_vs_aberrated_min"] = min(curve[1:])
            out[f"{tool}_fsc_clean_vs_aberrated"] = curve
        return out


def bench_even(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cols = {"rlnEvenZernike": "[" + ",".join(str(v) for v in args.even) + "]"}
        stack, rows, box, pixel = _simulate(work, args.n, args.noise, cols)
        _write_star(work / "even.star", stack, rows, box, pixel, cols)
        maps = _reconstruct_both(work, work / "even.star", "even")
        out = {"part": "even", "n": args.n, "even": args.even}
        for tool in ("relion", "cryograd"):
            curve = _fsc(maps[tool], work / "truth.mrc")
            out[f"{tool}_mean_fsc_to_truth"] = float(np.mean(curve[1:]))
        out["fsc_cryograd_vs_relion"] = _fsc(maps["cryograd"], maps["relion"])
        return out


ACCURACY_SETS = {
    "beam tilt (3, -2) mrad": ["--beam-tilt=3,-2"],
    "4-fold astigmatism Z(4,4) = 500": ["--even-zernike=0,0,0,0,0,0,0,0,500"],
    "2 % anisotropic mag": ["--mag-matrix=1.01,0,0,0.99"],
    "2 groups, 2.72 / 3.0 Å": ["--group-angpix=2.721875,3.0"],
}


def _cryograd_set(work: Path, tag: str, args, flags: list[str]) -> Path:
    """``cryograd simulate`` of the package map with ``flags``: the STAR path."""
    src = HERE.parent / "src" / "cryograd" / "data" / "emd_5168_64.mrc"
    cmd = [sys.executable, "-m", "cryograd", "simulate", src, "-n", args.n, "-o", work / tag]
    _run([*cmd, "--snr", args.snr, "--seed", "3", *flags], work)
    return work / tag / "particles.star"


def _accuracy_row(work: Path, tag: str, star: Path) -> dict:
    maps = _reconstruct_both(star.parent, star, tag)
    truth = star.parent / "ground_truth.mrc"
    to_truth = {tool: _fsc(maps[tool], truth) for tool in maps}
    between = _fsc(maps["halves"], maps["relion"])
    inside = _fsc(maps["halves"], maps["relion"], in_sphere=True)
    shells = [i for i in range(1, len(between)) if to_truth["halves"][i] >= 0.5]
    return {
        "fsc_cryograd_relion_min": min(between[i] for i in shells) if shells else float("nan"),
        "fsc_cryograd_relion_sphere_min": min(inside[i] for i in shells)
        if shells
        else float("nan"),
        "shells_to_resolution": len(shells),
        "relion_mean_fsc_truth": float(np.mean(to_truth["relion"][1:])),
        "cryograd_mean_fsc_truth": float(np.mean(to_truth["cryograd"][1:])),
        "cryograd_halves_mean_fsc_truth": float(np.mean(to_truth["halves"][1:])),
    }


def _row_cells(name: str, r: dict, baseline: float) -> str:
    """A table row's first cells: set, FSC(cryograd, RELION) box / ball, RELION's and cryograd's
    mean FSC to the truth (cryograd's change against ``baseline``)."""
    return (
        f"| {name} | {r['fsc_cryograd_relion_min']:.4f} / "
        f"{r['fsc_cryograd_relion_sphere_min']:.4f} ({r['shells_to_resolution']} shells) "
        f"| {r['relion_mean_fsc_truth']:.4f} | {r['cryograd_mean_fsc_truth']:.4f} "
        f"({r['cryograd_mean_fsc_truth'] - baseline:+.4f})"
    )


def bench_accuracy(args) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows["clean"] = _accuracy_row(work, "clean", _cryograd_set(work, "clean", args, []))
        for i, (name, flags) in enumerate(ACCURACY_SETS.items()):
            star = _cryograd_set(work, f"set{i}", args, flags)
            rows[name] = _accuracy_row(work, f"set{i}", star)
    clean = rows["clean"]["cryograd_mean_fsc_truth"]
    lines = [
        f"box 64, {args.n} particles, SNR {args.snr} (cryograd simulate), "
        "cryograd direct vs relion_reconstruct --ctf",
        "| set | FSC(cryograd halves mean, RELION) min to res.: box / RELION's sphere | "
        "RELION mean FSC truth | cryograd map.mrc mean FSC truth (− clean) | "
        "cryograd halves mean (− clean) |",
        "|---|---|---|---|---|",
    ]
    clean_h = rows["clean"]["cryograd_halves_mean_fsc_truth"]
    for name, r in rows.items():
        lines.append(
            f"{_row_cells(name, r, clean)} | {r['cryograd_halves_mean_fsc_truth']:.4f} "
            f"({r['cryograd_halves_mean_fsc_truth'] - clean_h:+.4f}) |"
        )
    print("\n".join(lines), file=sys.stderr)
    return {"part": "accuracy", "n": args.n, "snr": args.snr, "rows": rows}


def _padded_maps(work: Path) -> dict[str, Path]:
    """The package map, Fourier-padded to box 80 (pixel × 0.8) and zero-padded to box 96."""
    import mrcfile

    src = HERE.parent / "src" / "cryograd" / "data" / "emd_5168_64.mrc"
    with mrcfile.open(src) as m:
        vol, pixel = m.data.astype(np.float64), float(m.voxel_size.x)
    n = vol.shape[0]
    spec = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(vol)))
    spec[0], spec[:, 0], spec[:, :, 0] = 0, 0, 0  # the Nyquist planes: no partner once padded
    out = {"g64": src}
    for name, m_box in (("g80", 80), ("g96", 96)):
        a = m_box // 2 - n // 2
        if name == "g80":
            big = np.zeros((m_box,) * 3, complex)
            big[a : a + n, a : a + n, a : a + n] = spec
            grid = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(big))).real * (m_box / n) ** 3
            px = pixel * n / m_box
        else:
            grid, px = np.zeros((m_box,) * 3), pixel
            grid[a : a + n, a : a + n, a : a + n] = vol
        with mrcfile.new(work / f"{name}.mrc", overwrite=True) as m:
            m.set_data(grid.astype(np.float32))
            m.voxel_size = px
        out[name] = work / f"{name}.mrc"
    return out


def _merge_sets(work: Path, names: list[str], out: str) -> Path:
    """One STAR of the sets ``work/<name>/particles.star``, one optics group each."""
    import pandas as pd
    import starfile

    optics, parts = [], []
    for g, name in enumerate(names, 1):
        d = starfile.read(work / name / "particles.star", always_dict=True)
        o, q = d["optics"].copy(), d["particles"].copy()
        o["rlnOpticsGroup"], q["rlnOpticsGroup"] = g, g
        o["rlnOpticsGroupName"] = f"opticsGroup{g}"
        q["rlnImageName"] = [
            f"{v.split('@')[0]}@{name}/{v.split('@')[1]}" for v in q["rlnImageName"]
        ]
        optics.append(o)
        parts.append(q)
    path = work / f"{out}.star"
    tables = {"optics": pd.concat(optics), "particles": pd.concat(parts, ignore_index=True)}
    starfile.write(tables, path, overwrite=True)
    return path


def bench_boxes(args) -> dict:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        maps = _padded_maps(work)
        maps["g64b"] = maps["g64"]
        for seed, (name, path) in enumerate(maps.items()):
            cmd = [sys.executable, "-m", "cryograd", "simulate", path, "-n", args.n]
            _run([*cmd, "-o", work / name, "--snr", args.snr, "--seed", seed + 3], work)
        shutil.copy(work / "g64" / "ground_truth.mrc", work / "ground_truth.mrc")
        sets = {
            "box 64 alone": ["g64"],
            "box 64 + box 64 (baseline)": ["g64", "g64b"],
            "box 64 + box 80 at 0.8 × pixel (same field of view)": ["g64", "g80"],
            "box 64 + box 96 (1.5 × field of view, cropped)": ["g64", "g96"],
        }
        for i, (label, names) in enumerate(sets.items()):
            rows[label] = _accuracy_row(work, f"b{i}", _merge_sets(work, names, f"b{i}"))
    base = rows["box 64 + box 64 (baseline)"]["cryograd_mean_fsc_truth"]
    lines = [
        f"{args.n} particles per set, SNR {args.snr} (cryograd simulate), box-64 reference",
        "| set | FSC(cryograd halves mean, RELION) min to res.: box / RELION's sphere | "
        "RELION mean FSC truth | cryograd map.mrc mean FSC truth (− baseline) |",
        "|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(f"{_row_cells(label, r, base)} |")
    print("\n".join(lines), file=sys.stderr)
    return {"part": "boxes", "n": args.n, "snr": args.snr, "rows": rows}


def bench_ewald(args) -> dict:
    """``relion_reconstruct --ewald`` beside ``cryograd reconstruct --ewald`` on one
    ``relion_project`` set (and both tools' maps without ``--ewald``)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stack, rows, box, pixel = _simulate(work, args.n, args.noise, {})
        _write_star(work / "set.star", stack, rows, box, pixel, {})
        d = str(args.mask_diameter)
        ewald = _reconstruct_both(
            work,
            work / "set.star",
            "ewald",
            ["--ewald", "--mask_diameter", d, "--sectors", str(args.sectors)],
            ["--ewald", "--mask-diameter", d, "--sectors", str(args.sectors)],
        )
        plain = _reconstruct_both(work, work / "set.star", "plain")
        between = _fsc(ewald["halves"], ewald["relion"])
        truth = work / "truth.mrc"
        to_truth = _fsc(ewald["halves"], truth)
        shells = [i for i in range(1, len(between)) if to_truth[i] >= 0.5]
        out = {
            "part": "ewald",
            "n": args.n,
            "mask_diameter": args.mask_diameter,
            "fsc_cryograd_relion_ewald_min": min(between[i] for i in shells),
            "shells_to_resolution": len(shells),
            "fsc_cryograd_relion_ewald": between,
            "fsc_cryograd_relion_plain_min": min(
                _fsc(plain["halves"], plain["relion"])[i] for i in shells
            ),
            "fsc_relion_ewald_vs_plain_min": min(_fsc(ewald["relion"], plain["relion"])[1:]),
            "fsc_cryograd_ewald_vs_plain_min": min(_fsc(ewald["halves"], plain["halves"])[1:]),
        }
        for tool in ("relion", "halves"):
            out[f"{tool}_ewald_mean_fsc_truth"] = float(np.mean(_fsc(ewald[tool], truth)[1:]))
            out[f"{tool}_plain_mean_fsc_truth"] = float(np.mean(_fsc(plain[tool], truth)[1:]))
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--part",
        choices=["phases", "invariance", "even", "accuracy", "ewald", "boxes", "all"],
        default="all",
    )
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--noise", type=float, default=1.0, help="white noise sigma for relion_project")
    p.add_argument("--beam-tilt", type=float, nargs=2, default=[3.0, -2.0], metavar=("X", "Y"))
    p.add_argument("--odd", type=float, nargs="*", default=[], help="rlnOddZernike values")
    p.add_argument("--even", type=float, nargs="*", default=[0, 0, 0, 0, 0, 0, 0, 0, 500.0])
    p.add_argument("--snr", type=float, default=0.1, help="SNR of cryograd simulate (accuracy)")
    p.add_argument("--mask-diameter", type=float, default=150.0, help="--ewald's diameter, Å")
    p.add_argument("--sectors", type=int, default=2, help="--ewald's sectors")
    args = p.parse_args()
    every = ["phases", "invariance", "even", "accuracy", "ewald", "boxes"]
    parts = every if args.part == "all" else [args.part]
    have_relion = shutil.which("relion_project") and shutil.which("relion_reconstruct")
    for part in parts:
        if part != "phases" and not have_relion:
            print(json.dumps({"part": part, "skipped": "RELION not installed"}))
            continue
        print(
            json.dumps(
                {
                    "phases": bench_phases,
                    "invariance": bench_invariance,
                    "even": bench_even,
                    "accuracy": bench_accuracy,
                    "ewald": bench_ewald,
                    "boxes": bench_boxes,
                }[part](args)
            )
        )


if __name__ == "__main__":
    main()
