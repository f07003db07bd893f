"""GPU benchmark of cryograd's Triton kernels beside the torch path and torch-fourier-slice.

Run on a machine with a CUDA GPU (it exits with a message otherwise)::

    python benchmarks/bench_gpu.py [--out DIR] [--boxes 128 256] [--time-budget 240]

Reports, in one run on one device, float32, with the images already on the GPU:

- images per second for the fused Fourier slice insertion (CTF, shift, values and CTF² weights,
  ``--pad 2``; three variants: complex accumulator with 8-byte vector reductions, packed
  (re, im, w) records with 16-byte vector reductions, and scalar atomics only) and extraction
  (CTF, shift), real-space projection and back-projection, at each box,
  for the Triton kernels and for the torch path (the reference functions with
  ``CRYOGRAD_KERNELS=torch``); whole Fourier-slice projection / back-projection (FFTs included)
  for both and for ``torch-fourier-slice`` (``project_3d_to_2d``, ``backproject_2d_to_3d``)
  when it is importable;
- the device's own bounds measured in the same run: device-to-device copy bandwidth (bytes read +
  written) and scattered atomic adds per second with ``index_add_``;
- end to end, ``cryograd reconstruct --method direct`` of a simulated stack on local disk beside
  the time to merely read that stack from disk (page cache dropped with ``posix_fadvise``);
- the peak GPU memory of every row.

The table is printed and, with ``--out DIR``, written to ``DIR/bench.txt`` and ``DIR/bench.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROWS: list[dict] = []
_DEADLINE = math.inf
_SMOKE = False


def _log(msg: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@contextlib.contextmanager
def _kernels_mode(mode: str):
    old = os.environ.get("CRYOGRAD_KERNELS")
    os.environ["CRYOGRAD_KERNELS"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CRYOGRAD_KERNELS", None)
        else:
            os.environ["CRYOGRAD_KERNELS"] = old


def _time_cuda(fn: Callable[[], object], *, min_time: float = 0.4, max_reps: int = 30) -> float:
    """Seconds per call (CUDA events), after one warm-up call (compilation, caches)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    once = max(start.elapsed_time(end) / 1e3, 1e-6)
    reps = int(max(1, min(max_reps, min_time / once)))
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def _row(section: str, op: str, impl: str, box: int | str, **fields) -> dict:
    row = {"section": section, "op": op, "impl": impl, "box": box, **fields}
    ROWS.append(row)
    rate = row.get("rate")
    shown = f"{rate:,.0f} {row.get('unit', '')}" if isinstance(rate, (int, float)) else rate
    _log(f"{section:9s} {op:28s} {impl:20s} box {box}: {shown}  {row.get('note', '')}")
    return row


def _measure(section, op, impl, box, fn, n_items, unit="images/s", note=""):
    """Time ``fn`` (which handles ``n_items``) and record a row; failures become a row too."""
    if time.monotonic() > _DEADLINE:
        return _row(section, op, impl, box, rate="skipped (time budget)", unit=unit, note=note)
    try:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        sec = _time_cuda(fn)
        peak = torch.cuda.max_memory_allocated() / 2**30
        return _row(
            section,
            op,
            impl,
            box,
            rate=n_items / sec,
            unit=unit,
            ms_per_call=sec * 1e3,
            batch=n_items,
            peak_gib=peak,
            note=note,
        )
    except Exception as exc:  # report and go on: one failing path must not hide the others
        traceback.print_exc()
        msg = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return _row(section, op, impl, box, rate=msg, unit=unit, note=note)


# --------------------------------------------------------------------------------- device bounds
def bench_bounds(device: torch.device, scale: int = 0) -> None:
    n = 1 << (28 - scale)  # 1 GiB of float32
    src = torch.empty(n, device=device, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    _measure(
        "bounds",
        "d2d copy (read+write)",
        "torch",
        "-",
        lambda: dst.copy_(src),
        2 * n * 4 / 1e9,
        unit="GB/s",
    )
    m = 1 << (26 - scale)  # scattered adds into a 256³ grid
    grid = torch.zeros(256**3, device=device)
    idx = torch.randint(0, grid.numel(), (m,), device=device)
    val = torch.randn(m, device=device)
    _measure(
        "bounds",
        "scattered adds (index_add_)",
        "torch",
        "-",
        lambda: grid.index_add_(0, idx, val),
        m / 1e9,
        unit="G adds/s",
    )
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------------- operators
def _rotations(n: int, device) -> torch.Tensor:
    q = torch.randn(n, 4, device=device, dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=1,
    )
    return rot.reshape(n, 3, 3).float()


def _ctf(n: int, device):
    from cryograd.ctf import CTFParams

    g = torch.Generator().manual_seed(n)
    dfu = 10000.0 + 15000.0 * torch.rand(n, generator=g)
    return CTFParams.create(
        dfu, dfu - 300.0, 360.0 * torch.rand(n, generator=g), device=device, dtype=torch.float32
    )


def bench_fourier_slices(box: int, batch: int, device: torch.device, pad: float = 2.0) -> None:
    from cryograd.ctf import ctf_2d
    from cryograd.projectors import fourier_slice as fs
    from cryograd.projectors.fourier_slice import _triton as kfs
    from cryograd.shift import phase_ramp

    apix = 1.0
    p = fs.padded_size(box, pad)
    w = box // 2 + 1
    rot = _rotations(batch, device)
    shifts = 3.0 * torch.randn(batch, 2, device=device)
    ctf = _ctf(batch, device)
    slices = torch.randn(batch, box, w, device=device, dtype=torch.complex64)
    note = f"pad {pad:g}, CTF+shift fused"

    acc = torch.zeros((p, p, p // 2 + 1), device=device, dtype=torch.complex64)
    wgt = torch.zeros((p, p, p // 2 + 1), device=device, dtype=torch.float32)

    def k_insert():
        kfs.insert_slices(
            slices, rot, acc, weights=wgt, ctf=ctf, shifts_px=shifts, pixel_size_angstrom=apix
        )

    _measure(
        "fourier", "slice insertion (+CTF² weights)", "triton", box, k_insert, batch, note=note
    )
    packed = kfs.packed_accumulator(p, device=device)

    def k_insert_packed():
        kfs.insert_slices(slices, rot, packed, ctf=ctf, shifts_px=shifts, pixel_size_angstrom=apix)

    _measure(
        "fourier",
        "slice insertion (+CTF² weights)",
        "triton packed",
        box,
        k_insert_packed,
        batch,
        note=note + ", (re, im, w) records",
    )
    old = os.environ.get("CRYOGRAD_VECTOR_ATOMICS")
    os.environ["CRYOGRAD_VECTOR_ATOMICS"] = "0"
    try:
        _measure(
            "fourier",
            "slice insertion (+CTF² weights)",
            "triton scalar atomics",
            box,
            k_insert,
            batch,
            note=note + ", no vector reductions",
        )
    finally:
        if old is None:
            os.environ.pop("CRYOGRAD_VECTOR_ATOMICS")
        else:
            os.environ["CRYOGRAD_VECTOR_ATOMICS"] = old
    ext = fs.ExtendedSpectrum.zeros(p, device=device, dtype=torch.complex64)
    ext_w = fs.ExtendedSpectrum.zeros(p, device=device, dtype=torch.complex64)

    def t_insert():
        with _kernels_mode("torch"):
            for start in range(0, batch, fs.default_batch_size(box)):
                sl = slice(start, start + fs.default_batch_size(box))
                geom = fs.slice_geometry(rot[sl], box, p)
                c = ctf_2d(ctf[sl], box, apix, device=device, dtype=torch.float32)
                filt = c * phase_ramp(-shifts[sl], box, dtype=torch.float32)
                fs.insert_slices(slices[sl] * torch.conj(filt), geom, accumulator=ext)
                fs.insert_slices((c * c).to(torch.complex64), geom, accumulator=ext_w)

    _measure("fourier", "slice insertion (+CTF² weights)", "torch", box, t_insert, batch, note=note)

    vol = torch.randn(box, box, box, device=device)
    spec = fs.volume_spectrum(vol, p)

    def k_extract():
        kfs.extract_slices(spec, rot, box, ctf=ctf, shifts_px=shifts, pixel_size_angstrom=apix)

    _measure("fourier", "slice extraction", "triton", box, k_extract, batch, note=note)
    ext = fs.ExtendedSpectrum.from_spectrum(spec)

    def t_extract():
        with _kernels_mode("torch"):
            for start in range(0, batch, fs.default_batch_size(box)):
                sl = slice(start, start + fs.default_batch_size(box))
                geom = fs.slice_geometry(rot[sl], box, p)
                c = ctf_2d(ctf[sl], box, apix, device=device, dtype=torch.float32)
                _ = fs.extract_slices(ext, geom) * (c * phase_ramp(-shifts[sl], box))

    _measure("fourier", "slice extraction", "torch", box, t_extract, batch, note=note)
    torch.cuda.empty_cache()

    # whole operators, FFTs included
    images = torch.randn(batch, box, box, device=device)
    _measure(
        "fourier",
        "project (whole, with FFTs)",
        "triton",
        box,
        lambda: kfs.project(vol, rot, pad=pad),
        batch,
        note=f"pad {pad:g}",
    )
    with _kernels_mode("torch"):
        _measure(
            "fourier",
            "project (whole, with FFTs)",
            "torch",
            box,
            lambda: fs.project(vol, rot, pad=pad),
            batch,
            note=f"pad {pad:g}",
        )
    _measure(
        "fourier",
        "backproject (whole, with FFTs)",
        "triton",
        box,
        lambda: kfs.backproject(images, rot, pad=pad),
        batch,
        note=f"pad {pad:g}",
    )
    with _kernels_mode("torch"):
        _measure(
            "fourier",
            "backproject (whole, with FFTs)",
            "torch",
            box,
            lambda: fs.backproject(images, rot, pad=pad),
            batch,
            note=f"pad {pad:g}",
        )
    try:
        import torch_fourier_slice as tfs
    except ImportError:
        _row(
            "fourier",
            "project (whole, with FFTs)",
            "torch-fourier-slice",
            box,
            rate="not installed",
        )
    else:
        tb = min(batch, 256)
        _measure(
            "fourier",
            "project (whole, with FFTs)",
            "torch-fourier-slice",
            box,
            lambda: tfs.project_3d_to_2d(vol, rot[:tb], pad_factor=pad),
            tb,
            note=f"pad {pad:g}",
        )
        _measure(
            "fourier",
            "backproject (whole, with FFTs)",
            "torch-fourier-slice",
            box,
            lambda: tfs.backproject_2d_to_3d(images[:tb], rot[:tb], pad_factor=pad),
            tb,
            note=f"pad {pad:g}",
        )
    torch.cuda.empty_cache()


def bench_real_space(box: int, batch: int, torch_batch: int, device: torch.device) -> None:
    from cryograd.projectors import real_space as rs
    from cryograd.projectors.real_space import _triton as krs

    rot = _rotations(batch, device)
    vol = torch.randn(box, box, box, device=device)
    images = torch.randn(batch, box, box, device=device)
    _measure("real", "projection", "triton", box, lambda: krs.project(vol, rot), batch)
    with _kernels_mode("torch"):
        _measure(
            "real",
            "projection",
            "torch",
            box,
            lambda: rs.project(vol, rot[:torch_batch]),
            torch_batch,
        )
    _measure("real", "back-projection", "triton", box, lambda: krs.backproject(images, rot), batch)
    with _kernels_mode("torch"):
        _measure(
            "real",
            "back-projection",
            "torch",
            box,
            lambda: rs.backproject(images[:torch_batch], rot[:torch_batch]),
            torch_batch,
        )
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------------- end to end
def _drop_cache(paths: list[Path]) -> bool:
    ok = True
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            ok = False
    return ok


def _read_files(paths: list[Path]) -> int:
    total = 0
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while True:
                got = f.readinto(view)
                if not got:
                    break
                total += got
    return total


def _cli(argv: list[str]) -> int:
    from cryograd.cli.main import main

    try:
        return int(main(argv) or 0)
    except SystemExit as exc:  # argparse errors
        return int(exc.code or 0)


def _subcommand_options(name: str) -> set[str] | None:
    """Option strings of a ``cryograd`` subcommand, or None when it is not built in."""
    import argparse as _argparse

    from cryograd.cli.main import build_parser

    for action in build_parser()._actions:
        if isinstance(action, _argparse._SubParsersAction) and name in action.choices:
            return {o for a in action.choices[name]._actions for o in a.option_strings}
    return None


def bench_end_to_end(box: int, n_particles: int, workdir: Path, extra_args: list[str]) -> None:
    section, op = "e2e", f"reconstruct --method direct ({n_particles} particles)"
    if time.monotonic() > _DEADLINE:
        _row(section, op, "cryograd", box, rate="skipped (time budget)")
        return
    from cryograd.io.mrc import write_map

    if _subcommand_options("simulate") is None:
        _row(section, op, "cryograd", box, rate="skipped: cryograd simulate not built in")
        return
    workdir.mkdir(parents=True, exist_ok=True)
    # a smooth synthetic map: a few Gaussian blobs inside the sphere
    g = torch.Generator().manual_seed(0)
    c = torch.arange(box, dtype=torch.float32) - box // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    vol = torch.zeros(box, box, box)
    for _ in range(12):
        centre = (torch.rand(3, generator=g) - 0.5) * box * 0.4
        vol += torch.exp(
            -((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
            / (2 * (box / 16) ** 2)
        )
    map_path = workdir / "truth.mrc"
    write_map(map_path, vol.numpy(), 1.5)
    sim_dir = workdir / "sim"
    t0 = time.perf_counter()
    rc = _cli(
        [
            "simulate",
            str(map_path),
            "-n",
            str(n_particles),
            "-o",
            str(sim_dir),
            "--snr",
            "1",
            "--seed",
            "1",
            "--batch-size",
            "1024",
        ]
    )
    t_sim = time.perf_counter() - t0
    star = sim_dir / "particles.star"
    if rc != 0 or not star.exists():
        _row(section, op, "cryograd", box, rate=f"skipped: cryograd simulate failed (rc={rc})")
        return
    _log(f"simulated {n_particles} particles of box {box} in {t_sim:.1f} s")
    stacks = sorted(sim_dir.glob("*.mrcs"))
    size = sum(p.stat().st_size for p in stacks)
    cold = _drop_cache(stacks)
    t0 = time.perf_counter()
    nbytes = _read_files(stacks)
    t_read = time.perf_counter() - t0
    note = f"{size / 1e9:.2f} GB on {workdir}; page cache {'dropped' if cold else 'NOT dropped'}"
    _row(
        section,
        "read the stack from disk",
        "os read",
        box,
        rate=n_particles / t_read,
        unit="particles/s",
        seconds=t_read,
        gb_per_s=nbytes / t_read / 1e9,
        note=note,
    )
    rec_options = _subcommand_options("reconstruct")
    if rec_options is None:
        _row(section, op, "cryograd", box, rate="skipped: cryograd reconstruct not built in")
        return
    if "--device" in rec_options and "--device" not in extra_args:
        extra_args = [*extra_args, "--device", "cpu" if _SMOKE else "cuda"]
    _drop_cache(stacks)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    out_map = workdir / "direct.mrc"
    t0 = time.perf_counter()
    rc = _cli(["reconstruct", str(star), "-o", str(out_map), "--method", "direct", *extra_args])
    t_rec = time.perf_counter() - t0
    if rc != 0:
        _row(section, op, "cryograd", box, rate=f"failed: cryograd reconstruct rc={rc}")
        return
    _row(
        section,
        op,
        "cryograd",
        box,
        rate=n_particles / t_rec,
        unit="particles/s",
        seconds=t_rec,
        peak_gib=torch.cuda.max_memory_allocated() / 2**30,
        note=f"{100 * t_read / t_rec:.0f}% of the raw read rate; {' '.join(extra_args)}",
    )


# --------------------------------------------------------------------------------- report
def _format_table() -> str:
    head = (
        f"{'section':9s} {'operation':33s} {'impl':20s} {'box':>4s} {'rate':>26s} "
        f"{'ms/call':>9s} {'batch':>7s} {'peak GiB':>8s}  note"
    )
    lines = [head, "-" * len(head)]
    for r in ROWS:
        rate = r.get("rate")
        note = r.get("note", "")
        if isinstance(rate, (int, float)):
            rate = (
                f"{rate:,.1f} {r.get('unit', '')}"
                if rate < 100
                else f"{rate:,.0f} {r.get('unit', '')}"
            )
        else:
            rate, note = "-", f"{rate}; {note}" if note else str(rate)
        ms = r.get("ms_per_call") or r.get("seconds", 0) * 1e3
        ms = f"{ms:9.2f}" if ms else " " * 9
        counted = "/s" in str(r.get("unit")) and r.get("unit", "").split("/")[0] in (
            "images",
            "particles",
        )
        batch = f"{r['batch']:7.0f}" if counted and r.get("batch") else " " * 7
        peak = f"{r['peak_gib']:8.2f}" if r.get("peak_gib") is not None else " " * 8
        lines.append(
            f"{r['section']:9s} {r['op'][:33]:33s} {r['impl']:20s} {str(r['box']):>4s} "
            f"{str(rate)[:26]:>26s} {ms} {batch} {peak}  {note}"
        )
    # speed-ups of the kernels over the torch path, same op and box
    by_key = {(r["op"], r["box"], r["impl"]): r.get("rate") for r in ROWS}
    ratios = []
    for (op, box, impl), rate in by_key.items():
        base = by_key.get((op, box, "torch"))
        if impl == "triton" and isinstance(rate, float) and isinstance(base, float) and base > 0:
            ratios.append(f"  {op} @ {box}: triton / torch = {rate / base:.1f}x")
    if ratios:
        lines += ["", "kernel speed-up over the torch path (same run):", *ratios]
    lines += ["", "targets (issue 5):", *_targets(by_key)]
    return "\n".join(lines)


def _targets(by_key: dict) -> list[str]:
    """The issue's targets, judged on this run's numbers."""

    def rate(op, box, impl):
        r = by_key.get((op, box, impl))
        return r if isinstance(r, float) else None

    out = []
    ins, ext = "slice insertion (+CTF² weights)", "slice extraction"
    for box in sorted({k[1] for k in by_key if isinstance(k[1], int)}):
        best = max(
            [r for r in (rate(ins, box, "triton"), rate(ins, box, "triton packed")) if r] or [0.0]
        )
        base = rate(ins, box, "torch")
        if best and base:
            goal = "≥ 400,000/s and " if box == 128 else ""
            ok = best >= 3 * base and (box != 128 or best >= 400_000)
            out.append(
                f"  insertion @ {box}: {best:,.0f}/s = {best / base:.1f}x torch "
                f"({goal}≥ 3x): {'MET' if ok else 'NOT MET'}"
            )
        e, e_base = rate(ext, box, "triton"), rate(ext, box, "torch")
        if e and e_base and best:
            ok = e >= best and e >= 3 * e_base
            out.append(
                f"  extraction @ {box}: {e:,.0f}/s = {e / e_base:.1f}x torch "
                f"(≥ insertion, ≥ 3x): {'MET' if ok else 'NOT MET'}"
            )
    rec = [r for r in ROWS if r["section"] == "e2e" and r["impl"] == "cryograd"]
    read = [r for r in ROWS if r["section"] == "e2e" and r["impl"] == "os read"]
    if rec and read and isinstance(rec[0].get("rate"), float):
        frac = rec[0]["rate"] / read[0]["rate"]
        out.append(
            f"  direct reconstruction from disk: {100 * frac:.0f}% of the raw read rate "
            f"(≥ 80%): {'MET' if frac >= 0.8 else 'NOT MET'}"
        )
    return out or ["  (not enough rows to judge)"]


def _use_cpu_timers() -> None:
    """Stand-ins for the CUDA calls, so that ``--cpu-smoke-test`` runs every path on the CPU."""
    global _time_cuda

    def wall(fn, *, min_time=0.0, max_reps=1):
        fn()
        t0 = time.perf_counter()
        fn()
        return max(time.perf_counter() - t0, 1e-9)

    _time_cuda = wall
    torch.cuda.empty_cache = lambda: None
    torch.cuda.reset_peak_memory_stats = lambda *a, **k: None
    torch.cuda.max_memory_allocated = lambda *a, **k: 0
    torch.cuda.synchronize = lambda *a, **k: None


def _environment() -> dict:
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            sms=props.multi_processor_count,
        )
    else:
        info.update(device="CPU (smoke test, Triton interpreter)", memory_gib=0, sms=0)
    return info


def _end_to_end(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="cryograd-bench-", dir=args.workdir) as tmp:
        try:
            bench_end_to_end(
                args.e2e_box, args.e2e_particles, Path(tmp), args.reconstruct_args.split()
            )
        except Exception as exc:  # report and go on
            traceback.print_exc()
            _row(
                "e2e",
                "reconstruct --method direct",
                "cryograd",
                args.e2e_box,
                rate=f"failed: {type(exc).__name__}: {str(exc)[:100]}",
            )


def main(argv: list[str] | None = None) -> int:
    global _DEADLINE, _SMOKE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write bench.txt and bench.json here")
    parser.add_argument("--boxes", type=int, nargs="+", default=[128, 256])
    parser.add_argument(
        "--time-budget",
        type=float,
        default=300.0,
        help="seconds; later rows are skipped once it is spent",
    )
    parser.add_argument(
        "--e2e-particles",
        type=int,
        default=10000,
        help="particles in the simulated stack (0: skip the end-to-end run)",
    )
    parser.add_argument("--e2e-box", type=int, default=128)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="local-disk folder for the simulated stack (default: a temp dir)",
    )
    parser.add_argument(
        "--reconstruct-args",
        default="",
        help="extra arguments for cryograd reconstruct (e.g. '--batch-size 4096')",
    )
    parser.add_argument(
        "--cpu-smoke-test",
        action="store_true",
        help="check this script without a GPU: tiny sizes, CPU, Triton interpreter "
        "(numbers meaningless)",
    )
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke_test
    if smoke:
        _SMOKE = True
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
        _use_cpu_timers()
        args.boxes = [16]
        args.e2e_box = min(args.e2e_box, 32)
        args.e2e_particles = min(args.e2e_particles, 64)
    elif not torch.cuda.is_available():
        print(
            "bench_gpu.py needs a CUDA GPU: torch.cuda.is_available() is False here. "
            "Run benchmarks/bench_projectors.py for the CPU, or scripts/gpu_check.sh on a GPU.",
            file=sys.stderr,
        )
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("bench_gpu.py needs Triton (it comes with torch's CUDA build)", file=sys.stderr)
        return 2
    os.environ.pop("CRYOGRAD_KERNELS", None)
    _DEADLINE = time.monotonic() + args.time_budget
    device = torch.device("cpu" if smoke else "cuda")
    env = _environment()
    _log(f"device: {env}")

    bench_bounds(device, scale=10 if smoke else 0)
    # the most telling rows first, so that a tight --time-budget still gets them
    boxes = sorted(args.boxes)
    for i, box in enumerate(boxes):
        batch = 4 if smoke else 2048 if box <= 128 else 512 if box <= 256 else 128
        bench_fourier_slices(box, batch, device)
        batch = 4 if smoke else 64 if box <= 128 else 16
        bench_real_space(box, batch, 2 if smoke else 16 if box <= 128 else 4, device)
        if i == 0 and args.e2e_particles > 0:
            _end_to_end(args)

    table = _format_table()
    header = (
        f"cryograd GPU benchmark, float32 — {env['device']} ({env['memory_gib']} GiB, "
        f"{env['sms']} SMs), torch {env['torch']}, CUDA {env['cuda']}, "
        f"triton {env['triton']}"
    )
    print("\n" + header + "\n" + table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench.txt").write_text(header + "\n" + table + "\n")
        (args.out / "bench.json").write_text(
            json.dumps({"environment": env, "rows": ROWS}, indent=1)
        )
        _log(f"wrote {args.out / 'bench.txt'} and bench.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
