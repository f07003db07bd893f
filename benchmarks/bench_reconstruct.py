"""Benchmark: whole-command direct reconstruction by cryograd beside RELION and cryoDRGN.

For each box (default 64, 128 and 256; ``--quick``: 64 and 128 with fewer particles) one data set
is simulated (SNR 0.1, CTF, shifts) from the built-in map Fourier-padded to the box; then, in the
same run and interleaved (``--repeats`` rounds, the order rotated each round, so that other load on
the machine falls on every tool alike), it times

- ``cryograd reconstruct --method direct`` (a subprocess, as users run it; ``--refine 0`` and the
  default refinement),
- ``relion_reconstruct --ctf`` (found on ``$PATH`` or ``$RELION_RECONSTRUCT``; run in the data's
  folder, single-threaded as Debian builds it),
- cryoDRGN's ``backproject_voxel`` (the interpreter of a cryoDRGN environment:
  ``--cryodrgn-python``, ``$CRYODRGN_PYTHON``, or the ``python`` beside a ``cryodrgn`` on
  ``$PATH``; cryoDRGN's pose file
  holds RELION's ``A`` and ``origin / box``, its CTF has the opposite sign and it inverts the data
  by default, which compensates),

and prints wall time, CPU time (user + system of the child and its threads), peak memory (max
RSS of the child) and, for cryograd, the memory planner's estimate and the ratios to the peers
(median over the rounds). A peer that is not found is skipped and named. It then measures the
insertion throughput of the compiled loops on 1 and on all threads (interleaved, in process), and
the time to open a 1M-row RELION 3.1 STAR file with ``cryograd.read_particles`` beside
``starfile.read`` (``--star-rows``; 0 skips it).

Run: ``python benchmarks/bench_reconstruct.py [--quick] [--boxes 64 128] [-n 4000 5000]
[--repeats 2] [--threads N] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# as the ``cryograd`` command does (cryograd.cli.main.quiet_openmp_waits), before torch loads
# libgomp, so that the in-process insertion timing runs as the command does
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import mrcfile  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cryograd.data import demo_map_path  # noqa: E402
from cryograd.io.mrc import read_map, write_map  # noqa: E402
from cryograd.particles import read_particles  # noqa: E402
from cryograd.reconstruction.memory import estimate_memory_bytes  # noqa: E402
from cryograd.simulation import simulate  # noqa: E402
from cryograd.solvers.config import DirectConfig  # noqa: E402
from cryograd.validation import fsc, resolution_at  # noqa: E402

#: Particles per box by default (``--quick``: the second column).
DEFAULT_N = {64: (4000, 1000), 128: (5000, 1000), 256: (1000, 0)}


def upsampled_map(box: int) -> tuple[np.ndarray, float]:
    """The built-in 64³ map Fourier-padded (or cropped) to ``box``, with its voxel size."""
    m = read_map(demo_map_path())
    vol = torch.from_numpy(m.data).double()
    n = vol.shape[0]
    spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(vol)))
    out = torch.zeros((box,) * 3, dtype=spec.dtype)
    h = min(n, box)
    so, do = n // 2 - h // 2, box // 2 - h // 2
    out[do : do + h, do : do + h, do : do + h] = spec[so : so + h, so : so + h, so : so + h]
    big = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(out))).real * (box / n) ** 3
    return big.numpy().astype(np.float32), m.voxel_size_angstrom * n / box


def timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``cmd``: wall time, CPU time and max RSS of the child (measured in a wrapper)."""
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc': p.returncode, 'wall_s': time.perf_counter() - t,\n"
        "  'cpu_s': r.ru_utime + r.ru_stime, 'maxrss_mb': r.ru_maxrss / 1024,\n"
        "  'tail': (p.stdout + p.stderr)[-2000:]}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env, cwd=cwd
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def fsc_to_truth(map_path: Path, truth: np.ndarray, px: float, *, try_axes: bool = False):
    """Resolutions (Å) at FSC 0.5 and 0.143 of a map against the truth (best axis convention)."""
    with mrcfile.open(map_path, permissive=True) as m:
        data = np.asarray(m.data, dtype=np.float64)
    candidates = {"as written": data}
    if try_axes:  # peers may write [x, y, z] or flip the hand
        candidates["transposed"] = data.transpose(2, 1, 0)
        candidates["z flipped"] = data[::-1].copy()
    best = None
    for name, vol in candidates.items():
        curve = fsc(torch.from_numpy(np.ascontiguousarray(vol)), torch.from_numpy(truth)).numpy()
        score = float(curve[1:].mean())
        if best is None or score > best[0]:
            best = (score, name, curve)
    box = truth.shape[0]
    _, name, curve = best
    return {
        "fsc_truth_05_angstrom": resolution_at(curve, 0.5, box, px),
        "fsc_truth_0143_angstrom": resolution_at(curve, 0.143, box, px),
        "fsc_truth_mean": float(curve[1:].mean()),
        "axes": name,
    }


def write_cryodrgn_inputs(star: Path, out: Path) -> tuple[Path, Path, Path]:
    """cryoDRGN pose and CTF pickles and one .mrcs for the simulated set."""
    ps = read_particles(star)
    n, box = len(ps), ps.box_size
    images = ps.images(np.arange(n))
    stack = out / "particles.mrcs"
    with mrcfile.new(stack, overwrite=True) as m:
        m.set_data(images.astype(np.float32))
        m.voxel_size = ps.pixel_size_angstrom
    poses = out / "poses.pkl"
    trans = (ps.shifts_px if ps.shifts_px is not None else np.zeros((n, 2))) / box
    with open(poses, "wb") as fh:
        pickle.dump((ps.rotations.astype(np.float32), trans.astype(np.float32)), fh)
    c = ps.ctf  # CTF_COLUMNS: dfU, dfV, angle, kV, Cs, Q0, phase, B, scale
    ctf = np.zeros((n, 9), dtype=np.float32)
    ctf[:, 0] = box
    ctf[:, 1] = ps.pixel_size_angstrom
    ctf[:, 2:9] = c[:, :7]
    ctf_path = out / "ctf.pkl"
    with open(ctf_path, "wb") as fh:
        pickle.dump(ctf, fh)
    return stack, poses, ctf_path


_DRGN_MAIN = (
    "import argparse, sys; from cryodrgn.commands import backproject_voxel as b; "
    "p = argparse.ArgumentParser(); b.add_args(p); b.main(p.parse_args(sys.argv[1:]))"
)


def find_cryodrgn_python(given: str | None) -> str | None:
    """The interpreter of a cryoDRGN environment (``backproject_voxel`` importable)."""
    cands = [given, os.environ.get("CRYODRGN_PYTHON")]
    exe = shutil.which("cryodrgn")
    if exe:
        cands.append(str(Path(exe).with_name("python")))
    for cand in cands:
        if cand and Path(cand).exists():
            ok = subprocess.run(
                [cand, "-c", "import cryodrgn.commands.backproject_voxel"], capture_output=True
            )
            if ok.returncode == 0:
                return cand
    return None


def find_relion(given: str | None) -> str | None:
    for cand in (given, os.environ.get("RELION_RECONSTRUCT"), shutil.which("relion_reconstruct")):
        if cand and Path(cand).exists():
            return cand
    return None


def prepare(box: int, n: int, out: Path, drgn: bool) -> dict:
    """Simulated data of one box (kept between runs), the truth and the cryoDRGN inputs."""
    data = out / f"box{box}_n{n}"
    truth, px = upsampled_map(box)
    if not (data / "particles.star").exists():
        simulate(truth, n, pixel_size=px, snr=0.1, seed=0, out_dir=data, progress=False)
    write_map(data / "truth.mrc", truth, px)
    case = {"box": box, "n": n, "dir": data, "truth": truth, "px": px}
    if drgn and not (data / "poses.pkl").exists():
        write_cryodrgn_inputs(data / "particles.star", data)
    return case


def commands(case: dict, relion: str | None, drgn_python: str | None, refine: list[str]):
    """``{tool: (argv, cwd, map path)}`` of every tool for one data set."""
    data = case["dir"]
    star = data / "particles.star"
    tools = {}
    for r in refine:
        o = data / f"cryograd_refine{r}"
        argv = [sys.executable, "-m", "cryograd", "reconstruct", str(star), "-o", str(o)]
        argv += ["--method", "direct", "--force", "--no-progress", "--device", "cpu"]
        label = "cryograd direct" + (" --refine 0" if r == "0" else "")
        tools[label] = (argv + (["--refine", r] if r else []), None, o / "map.mrc")
    if relion:
        out = str((data / "relion.mrc").resolve())  # RELION runs in the data folder
        argv = [relion, "--i", "particles.star", "--o", out, "--ctf"]
        tools["relion_reconstruct --ctf"] = (argv + ["--angpix", str(case["px"])], data, None)
    if drgn_python:
        argv = [drgn_python, "-c", _DRGN_MAIN, str(data / "particles.mrcs"), "--poses"]
        argv += [str(data / "poses.pkl"), "--ctf", str(data / "ctf.pkl"), "-o", str(data / "drgn")]
        tools["cryoDRGN backproject_voxel"] = (argv, None, None)
    return tools


def run_case(case: dict, tools: dict, repeats: int, env: dict) -> dict:
    """Every tool ``repeats`` times, interleaved, the order rotated each round."""
    names = list(tools)
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for rnd in range(repeats):
        for k in names[rnd % len(names) :] + names[: rnd % len(names)]:
            argv, cwd, _ = tools[k]
            res = timed(argv, env, cwd)
            if res["rc"] != 0:
                print(f"# {k} failed (box {case['box']}):", res["tail"][-600:], file=sys.stderr)
            runs[k].append(res)
    rows = {}
    for k, rs in runs.items():
        good = [r for r in rs if r["rc"] == 0]
        if not good:
            continue
        rows[k] = {f: statistics.median(r[f] for r in good) for f in ("wall_s", "cpu_s")}
        rows[k]["maxrss_mb"] = max(r["maxrss_mb"] for r in good)
        rows[k]["runs"] = len(good)
        path = tools[k][2] or _peer_map(case["dir"], k)
        if path is not None and path.exists():
            q = fsc_to_truth(path, case["truth"], case["px"], try_axes=not k.startswith("cryograd"))
            rows[k]["fsc0143_A"] = q["fsc_truth_0143_angstrom"]
    return rows


def _peer_map(data: Path, tool: str) -> Path | None:
    if tool.startswith("relion"):
        return data / "relion.mrc"
    out = data / "drgn"
    if out.is_file():
        return out
    found = sorted(out.rglob("*.mrc")) if out.is_dir() else []
    return found[0] if found else None


def planner_mb(box: int, label: str) -> float:
    """The planner's estimate (MB) for the row ``label`` (``... --refine N``, else the default)."""
    words = label.split()
    refine = (
        int(words[words.index("--refine") + 1]) if "--refine" in words else DirectConfig().refine
    )
    return estimate_memory_bytes(box, "direct", 2.0, 256, refine=refine) / 2**20


def print_case(case: dict, rows: dict) -> None:
    box, n = case["box"], case["n"]
    print(f"\nbox {box}, {n} particles, pad 2, CTF ({case['px']:.3f} Å/px)")
    print(
        f"{'tool':<30}{'wall s':>8}{'CPU s':>8}{'peak MB':>9}{'plan MB':>9}{'ptcl/s':>8}"
        f"{'FSC.143 Å':>10}"
    )
    for k, r in rows.items():
        plan = ""
        if k.startswith("cryograd"):
            plan = f"{planner_mb(box, k):>9.0f}"
        print(
            f"{k:<30}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}{r['maxrss_mb']:>9.0f}{plan:>9}"
            f"{n / r['wall_s']:>8.0f}{r.get('fsc0143_A', float('nan')):>10.2f}"
        )
    for k, r in rows.items():
        if not k.startswith("cryograd"):
            continue
        for peer in ("relion_reconstruct --ctf", "cryoDRGN backproject_voxel"):
            if peer in rows:
                q = rows[peer]
                print(
                    f"  {k} / {peer}: wall {r['wall_s'] / q['wall_s']:.2f}x, "
                    f"CPU {r['cpu_s'] / q['cpu_s']:.2f}x, "
                    f"peak {r['maxrss_mb'] / q['maxrss_mb']:.2f}x"
                )
        plan = planner_mb(box, k)
        print(f"  {k}: planner estimate / measured peak {plan / r['maxrss_mb']:.2f}")


def insertion_throughput(case: dict, threads: int, repeats: int) -> None:
    """Particles/s of ``insert_particles`` on 1 and on ``threads`` threads, interleaved."""
    from cryograd.solvers.insertion import insert_particles

    ps = read_particles(case["dir"] / "particles.star")
    idx = np.arange(min(len(ps), 1000))
    insert_particles(ps, idx[:64], progress=False)  # warm up (library load, first pages)
    rates: dict[int, list[float]] = {1: [], threads: []}
    cpus: dict[int, list[float]] = {1: [], threads: []}
    for _ in range(repeats):
        for nt in rates:
            torch.set_num_threads(nt)
            t, c = time.perf_counter(), time.process_time()
            insert_particles(ps, idx, progress=False)
            rates[nt].append(len(idx) / (time.perf_counter() - t))
            cpus[nt].append(time.process_time() - c)
    torch.set_num_threads(threads)
    one, many = statistics.median(rates[1]), statistics.median(rates[threads])
    best1, best_n = max(rates[1]), max(rates[threads])
    print(
        f"\ninsertion, box {case['box']}, pad 2, {len(idx)} particles: 1 thread {one:.0f} "
        f"ptcl/s, {threads} threads {many:.0f} ptcl/s ({many / one:.2f}x; CPU s "
        f"{statistics.median(cpus[1]):.2f} vs {statistics.median(cpus[threads]):.2f}); best of "
        f"{len(rates[1])}: {best1:.0f} vs {best_n:.0f} ptcl/s ({best_n / best1:.2f}x)"
    )


def star_opening(rows: int, out: Path) -> None:
    """Seconds, CPU seconds and peak MB to open a ``rows``-row STAR file: cryograd vs starfile."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_star

    path = out / f"star_{rows}.star"
    if not path.exists():
        bench_star.write_star(path, rows)
    print(f"\nopening a {rows}-row RELION 3.1 STAR file ({path.stat().st_size / 1e6:.0f} MB)")
    print(f"{'reader':<26}{'wall s':>8}{'CPU s':>8}{'peak MB':>9}")
    for reader in ("cryograd read_particles", "starfile", "cryograd read_particles"):
        try:
            wall, cpu, peak = bench_star.measure(reader, path)
        except subprocess.CalledProcessError:
            print(f"{reader:<26} not available")
            continue
        print(f"{reader:<26}{wall:>8.2f}{cpu:>8.2f}{peak:>9.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boxes", type=int, nargs="+", default=None)
    ap.add_argument("-n", type=int, nargs="+", default=None, help="particles per box")
    ap.add_argument("--quick", action="store_true", help="boxes 64 and 128, 1000 particles")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds per box")
    ap.add_argument("--out", type=Path, default=Path("bench-reconstruct"))
    ap.add_argument("--cryodrgn-python", default=None)
    ap.add_argument("--relion", default=None, help="relion_reconstruct executable")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--refine", nargs="+", default=["0", ""], help="cryograd --refine values")
    ap.add_argument("--star-rows", type=int, default=None, help="0: skip the STAR timing")
    args = ap.parse_args()
    col = 1 if args.quick else 0
    boxes = args.boxes or [b for b, n in DEFAULT_N.items() if n[col]]
    counts = args.n or [DEFAULT_N.get(b, (1000, 1000))[col] for b in boxes]
    star_rows = args.star_rows if args.star_rows is not None else (200_000 if args.quick else 10**6)
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    torch.set_num_threads(args.threads)
    relion, drgn = find_relion(args.relion), find_cryodrgn_python(args.cryodrgn_python)
    print(f"machine: {os.cpu_count()} CPUs, {args.threads} threads used; {torch.__version__}")
    if relion is None:
        print("relion_reconstruct: not found ($PATH, $RELION_RECONSTRUCT), skipped")
    if drgn is None:
        print("cryoDRGN: no interpreter with cryodrgn found ($CRYODRGN_PYTHON, $PATH), skipped")
    report = []
    for box, n in zip(boxes, counts):
        case = prepare(box, n, args.out, drgn is not None)
        tools = commands(case, relion, drgn, args.refine)
        rows = run_case(case, tools, args.repeats, env)
        print_case(case, rows)
        report.append({"box": box, "n": n, "rows": rows})
        if box == 128:
            insertion_throughput(case, args.threads, max(5, args.repeats))
    if star_rows:
        star_opening(star_rows, args.out)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
