"""``cryograd.reconstruct``: gold-standard resolution, symmetry, every method, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryograd.errors import CryogradError
from cryograd.particles import ParticleSet
from cryograd.reconstruction import Result, estimate_memory_bytes, reconstruct
from cryograd.symmetry import symmetrize_volume
from cryograd.validation import fsc, resolution_at
from tests._recon_data import images_sum, make_particles, small_map


def test_half_map_resolution_matches_truth_resolution():
    """Half-map FSC 0.143 resolution within 15 % of the FSC-to-truth 0.5 resolution (the demo's
    setting: box 64, 3000 particles, SNR 0.1; a smaller box puts the first FSC-to-truth 0.5
    crossing in the low-CTF shells 2–3 instead)."""
    vol, px = small_map(64)
    ps, _ = make_particles(vol, 3000, px, snr=0.1, seed=20)
    res = reconstruct(ps, "direct", device="cpu", progress=False)
    truth_05 = resolution_at(fsc(res.full_map, vol), 0.5, 64, px)
    assert 2 * px < truth_05 < 20 * px  # the test sits between Nyquist and the box
    assert abs(res.resolution_angstrom - truth_05) <= 0.15 * truth_05, (
        res.resolution_angstrom,
        truth_05,
    )
    # the direct map's sum is the one the images carry (the plain division lost ~35 % of it)
    assert float(res.full_map.double().sum()) == pytest.approx(images_sum(ps), rel=0.02)
    assert isinstance(res, Result) and res.n_particles == 3000
    assert res.map.shape == (64, 64, 64) and len(res.half_maps) == 2


def _flip_2fold_x(volume: torch.Tensor) -> torch.Tensor:
    """``V(x, -y, -z)`` about the centre voxel ``N // 2`` (the D7 2-fold about x), exactly."""
    flipped = torch.flip(volume, dims=(0, 1))
    return torch.roll(flipped, shifts=(1, 1), dims=(0, 1))


def test_symmetry_d7_with_fewer_particles_matches_full_set():
    """A D7 map from 1/14 of the particles with sym D7 reaches the FSC the full set gives
    without it, and the map is invariant under the group."""
    vol, px = small_map(32)
    sym_vol = symmetrize_volume(torch.from_numpy(vol), "D7").numpy()
    n_full = 2800
    full, _ = make_particles(sym_vol, n_full, px, snr=0.02, seed=21)
    few, _ = make_particles(sym_vol, n_full // 14, px, snr=0.02, seed=22)
    r_full = reconstruct(full, "direct", device="cpu", progress=False, snr=1.0)
    r_sym = reconstruct(few, "direct", device="cpu", progress=False, sym="D7", snr=1.0)
    f_full = fsc(r_full.full_map, sym_vol).numpy()
    f_sym = fsc(r_sym.full_map, sym_vol).numpy()
    # up to where the full set's FSC to the truth drops below 0.5 the curves agree, and the
    # resolutions at 0.5 agree within 10 %
    top = int(np.nonzero(f_full[1:] < 0.5)[0][0]) + 1
    assert top >= 4
    diff = f_sym[1:top] - f_full[1:top]
    assert np.abs(diff).max() < 0.12 and abs(diff.mean()) < 0.03, (f_full, f_sym)
    r_a, r_b = resolution_at(f_full, 0.5, 32, px), resolution_at(f_sym, 0.5, 32, px)
    assert abs(r_a - r_b) <= 0.1 * r_a, (r_a, r_b)
    m = r_sym.full_map.double()
    # the 2-fold about x maps the grid onto itself (planes 0 of y and z have no partner)
    f = _flip_2fold_x(m)
    c = float(torch.nn.functional.cosine_similarity(m[1:, 1:].flatten(), f[1:, 1:].flatten(), 0))
    assert c > 0.999
    # under all 14 operators (rotations off the grid, so compared after the truth's band limit)
    s = symmetrize_volume(m, "D7")
    c7 = float(torch.nn.functional.cosine_similarity(m.flatten(), s.flatten(), 0))
    assert c7 > 0.95


@pytest.mark.parametrize("method", ["cg", "adam", "sgd"])
def test_every_method_gives_half_maps_and_fsc(method):
    vol, px = small_map(16)
    ps, _ = make_particles(vol, 300, px, snr=0.5, seed=23)
    kw = {"epochs": 2, "batch_size": 50} if method in ("adam", "sgd") else {}
    res = reconstruct(ps, method, device="cpu", progress=False, **kw)
    f = fsc(res.full_map, vol).numpy()
    assert f[1:5].min() > 0.8, f
    assert np.isfinite(res.resolution_angstrom)
    if method == "cg":
        assert res.history["full"]["converged"]
    else:
        assert len(res.history["half1"]["val_loss"]) == 3


def test_bad_input_is_reported():
    vol, px = small_map(16)
    ps, _ = make_particles(vol, 40, px, snr=None, seed=24)
    no_pose = ParticleSet.from_arrays(
        rotations=None, pixel_size_angstrom=px, box_size=16, images=ps.image_array
    )
    with pytest.raises(CryogradError, match="rlnAngleRot"):
        reconstruct(no_pose, device="cpu", progress=False)
    no_ctf = ParticleSet.from_arrays(
        rotations=ps.rotations, pixel_size_angstrom=px, box_size=16, images=ps.image_array
    )
    with pytest.raises(CryogradError, match="use_ctf=False"):
        reconstruct(no_ctf, device="cpu", progress=False)
    reconstruct(no_ctf, device="cpu", progress=False, use_ctf=False)  # allowed with --no-ctf
    with pytest.raises(CryogradError, match="val_fraction"):
        reconstruct(ps, "adam", device="cpu", progress=False, val_fraction=0.5)
    with pytest.raises(CryogradError, match="mask box"):
        reconstruct(ps, device="cpu", progress=False, mask=np.ones((8, 8, 8)))
    with pytest.raises(CryogradError, match="unknown method"):
        reconstruct(ps, "newton", device="cpu", progress=False)


def test_box_too_large_names_memory_and_remedies(monkeypatch):
    import cryograd.reconstruction.memory as rec

    vol, px = small_map(16)
    ps, _ = make_particles(vol, 20, px, snr=None, seed=25)
    monkeypatch.setattr(rec, "_available_memory_bytes", lambda device: 1 << 20)
    with pytest.raises(CryogradError, match=r"GiB.*pad=1") as info:
        reconstruct(ps, device="cpu", progress=False)
    assert "device='cpu'" not in str(info.value)  # already on the CPU: not a remedy
    with pytest.raises(CryogradError, match=r"GiB.*pad=1.*device='cpu'"):
        rec.check_memory(16, "direct", 2.0, 256, torch.device("cuda", 0), torch.float32)
    base = rec.BASE_BYTES  # the interpreter's own memory does not scale with the box
    assert estimate_memory_bytes(256, "direct") - base > 6 * (
        estimate_memory_bytes(128, "direct") - base
    )


def _with_halves(ps):
    """The set with ``rlnRandomSubset`` = 1, 2, 1, 2, ... so that the halves are known."""
    ps.half_set = (np.arange(len(ps)) % 2 + 1).astype(np.int64)
    return ps


def test_adam_direct_start_is_made_without_the_validation_particles():
    """``--init direct``: the epoch-0 validation loss is that of a direct map of the training
    particles alone, clearly above that of a map that has seen the validation particles (the
    leak that made every run keep the start); with an l2 penalty, adam from that start lowers
    the validation loss below its epoch-0 value (best epoch > 0)."""
    from cryograd.forward import ForwardModel
    from cryograd.solvers.direct import direct_start as _direct_start
    from cryograd.solvers.gradient import evaluate, split_validation
    from cryograd.solvers.losses import L2Loss

    vol, px = small_map(16)
    ps, _ = make_particles(vol, 600, px, snr=0.2, seed=23)
    ps = _with_halves(ps)
    half1 = np.nonzero(ps.half_set == 1)[0]
    train_idx, val_idx = split_validation(half1, 0.2, seed=0 + 1)
    kw = dict(
        pad=2.0,
        max_shell=None,
        device="cpu",
        dtype=torch.float32,
        use_ctf=True,
        symmetry=None,
        comm=None,
        refine=0,
    )
    model = ForwardModel(16, px)
    ev = dict(
        batch_size=50,
        use_ctf=True,
        symmetry=None,
        device="cpu",
        dtype=torch.float32,
        comm=__import__("cryograd.distributed", fromlist=["x"]).single_process("cpu"),
    )
    honest = evaluate(
        model, _direct_start(ps, train_idx, None, False, **kw), ps, val_idx, L2Loss(), **ev
    )
    leaky = evaluate(
        model, _direct_start(ps, half1, None, False, **kw), ps, val_idx, L2Loss(), **ev
    )
    assert leaky < honest * 0.995, (leaky, honest)

    res = reconstruct(
        ps,
        "adam",
        device="cpu",
        progress=False,
        epochs=4,
        batch_size=50,
        val_fraction=0.2,
        seed=0,
        penalty="l2",
        lam=0.5,
    )
    h = res.history["half1"]
    assert h["val_loss"][0] == pytest.approx(honest, rel=1e-5)
    assert h["best_epoch"] > 0 and min(h["val_loss"][1:]) < h["val_loss"][0], h["val_loss"]


def test_direct_half_maps_keep_the_data_mean_and_bad_snr_is_refused():
    """Each half map's sum is the one its own images carry (the plain division's were 27 % low,
    49 % with ``snr=1``), with the Wiener term's shrinkage at the origin (negligible for the
    default term, a few per cent for ``snr=1``); ``snr`` must be positive."""
    vol, px = small_map(32)
    ps, _ = make_particles(vol, 1500, px, snr=0.5, seed=26)
    ps = _with_halves(ps)
    for snr, low in ((None, 0.98), (1.0, 0.9)):
        res = reconstruct(ps, "direct", device="cpu", progress=False, snr=snr)
        for k, half in enumerate(res.half_maps, start=1):
            own = images_sum(ps.subset(np.nonzero(ps.half_set == k)[0]))
            ratio = float(half.double().sum()) / own
            assert low < ratio < 1.02, (snr, ratio)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(CryogradError, match="snr"):
            reconstruct(ps, "direct", device="cpu", progress=False, snr=bad)


def test_maxres_limits_the_reported_resolution():
    """``maxres`` is the best resolution a run can report; the FSC is 0 beyond it."""
    vol, px = small_map(32)
    ps, _ = make_particles(vol, 1500, px, snr=1.0, seed=27)
    maxres = 4.0 * px  # shell 8 of 16
    res = reconstruct(ps, "direct", device="cpu", progress=False, maxres=maxres)
    assert res.resolution_angstrom >= maxres - 1e-9
    assert res.fsc.resolution_05_angstrom >= maxres - 1e-9
    freqs = np.asarray(res.fsc.frequencies)
    beyond = freqs > 1.0 / maxres + 1e-9
    assert beyond.any() and np.all(np.asarray(res.fsc.fsc_final)[beyond] == 0)
    # without the limit the same data resolve beyond it (the limit is what stops it)
    free = reconstruct(ps, "direct", device="cpu", progress=False)
    assert free.resolution_angstrom < maxres


def test_mask_values_outside_unit_interval_are_refused():
    vol, px = small_map(16)
    ps, _ = make_particles(vol, 40, px, snr=None, seed=28)
    for bad in (2.0, -0.5, float("nan")):
        mask = np.zeros((16, 16, 16))
        mask[4:12, 4:12, 4:12] = 1.0
        mask[8, 8, 8] = bad
        with pytest.raises(CryogradError, match=r"within \[0, 1\]"):
            reconstruct(ps, device="cpu", progress=False, mask=mask)


def test_huber_default_threshold_follows_the_noise():
    """Without ``huber_delta`` the threshold is 1.345 · the noise σ (estimated robustly from the
    start's residuals), for data of very different intensity scales."""
    vol, px = small_map(16)
    for scale in (1.0, 100.0):
        ps, sigma = make_particles(vol * scale, 300, px, snr=0.5, seed=29)
        res = reconstruct(
            ps, "adam", device="cpu", progress=False, epochs=1, batch_size=50, loss="huber"
        )
        for tag in ("half1", "half2"):
            delta = res.history[f"huber_delta_{tag}"]
            assert delta == pytest.approx(1.345 * sigma, rel=0.1), (scale, delta, sigma)


def test_run_json_is_strict_json_and_outputs_have_the_maps_mode(tmp_path):
    import json
    import os

    vol, px = small_map(16)
    ps, _ = make_particles(vol, 200, px, snr=0.5, seed=30)
    res = reconstruct(
        ps, "adam", device="cpu", progress=False, epochs=1, batch_size=50, checkpoint_dir=tmp_path
    )
    assert any(not np.isfinite(x) for x in res.history["half1"]["train_loss"])  # NaN at epoch 0
    paths = res.save(tmp_path)

    def no_constants(name):
        raise AssertionError(f"run.json holds {name}")

    info = json.loads(paths["run_json"].read_text(), parse_constant=no_constants)
    assert info["history"]["half1"]["train_loss"][0] is None
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    files = [p for p in tmp_path.iterdir() if p.is_file()]
    assert {p.name for p in files} >= {
        "map.mrc",
        "fsc.csv",
        "fsc.png",
        "loss.png",
        "run.json",
        "checkpoint_half1.pt",
    }
    for p in files:
        assert p.stat().st_mode & 0o777 == expected, (p.name, oct(p.stat().st_mode))


def test_one_sided_random_subset_falls_back_to_a_seeded_split(caplog):
    """A file whose rlnRandomSubset puts every particle in one half still gives two half maps."""
    vol, px = small_map(16)
    ps, _ = make_particles(vol, 60, px, snr=None, seed=31)
    ps.half_set = np.ones(len(ps), dtype=np.int64)
    with caplog.at_level("WARNING"):
        res = reconstruct(ps, "direct", device="cpu", progress=False)
    assert "rlnRandomSubset puts all 60 selected particles in half 1" in caplog.text
    assert res.half_maps[0].abs().sum() > 0 and res.half_maps[1].abs().sum() > 0
    assert not torch.allclose(res.half_maps[0], res.half_maps[1])


@pytest.mark.parametrize(
    "cls, field, bad",
    [
        ("DirectConfig", "pad", 0.0),
        ("DirectConfig", "snr", float("nan")),
        ("DirectConfig", "lam", -1.0),
        ("DirectConfig", "refine", -1),
        ("DirectConfig", "batch_size", 0),
        ("DirectConfig", "projector", "radon"),
        ("CGConfig", "max_iter", 0),
        ("GradientConfig", "val_fraction", 0.5),
        ("GradientConfig", "epochs", 1.5),
        ("GradientConfig", "lr", -1e-3),
        ("GradientConfig", "huber_delta", 0.0),
        ("GradientConfig", "sorted_l1_q", 1.0),
        ("GradientConfig", "loss", "l3"),
        ("GradientConfig", "penalty", "l0"),
        ("GradientConfig", "init", "random"),
        ("GradientConfig", "lr_schedule", "step"),
        ("GradientConfig", "optimizer", "lbfgs"),
    ],
)
def test_configs_are_validated_once_and_errors_name_the_parameter(cls, field, bad):
    """A config refuses a bad value when it is made, naming the parameter (never a CLI flag)."""
    import dataclasses

    from cryograd.solvers import config

    with pytest.raises(CryogradError, match=rf"^{field} must") as info:
        getattr(config, cls)(**{field: bad})
    assert "--" not in str(info.value)
    good = getattr(config, cls)()
    with pytest.raises(dataclasses.FrozenInstanceError):
        good.pad = 3.0


def test_solver_registry_options_and_the_wiener_term_of_snr():
    """``SOLVERS`` holds the four methods; options of other methods are ignored, unknown ones
    refused; a constant ``snr`` gives the Wiener term ``ρ = (D/P)³ / snr`` on the padded grid."""
    from cryograd.projectors.fourier_slice import padded_size
    from cryograd.solvers import SOLVERS
    from cryograd.solvers.config import DirectConfig

    assert list(SOLVERS) == ["direct", "cg", "adam", "sgd"]
    vol, px = small_map(16)
    ps, _ = make_particles(vol, 40, px, snr=None, seed=32)
    res = reconstruct(ps, "direct", device="cpu", progress=False, snr=4.0, epochs=2, refine=0)
    p = padded_size(16, 2.0)
    assert res.history["wiener"]["kind"] == "constant"
    assert res.history["wiener"]["value"] == pytest.approx((16 / p) ** 3 / 4.0, rel=1e-12)
    assert res.parameters["snr"] == 4.0 and res.parameters["refine"] == 0
    same = reconstruct(
        ps, "direct", config=DirectConfig(snr=4.0, refine=0), device="cpu", progress=False
    )
    torch.testing.assert_close(same.map, res.map)
    with pytest.raises(TypeError, match="epoch"):
        reconstruct(ps, "direct", device="cpu", progress=False, epoch=3)


def test_solver_and_reconstruction_modules_import_without_circles():
    """The import graph of ``cryograd.solvers`` and ``cryograd.reconstruction`` (module-level
    imports, ``TYPE_CHECKING`` blocks left out) has no cycle, and no function imports from the
    package except the Triton kernels (an optional dependency)."""
    import ast
    from pathlib import Path

    root = Path(__file__).parents[1] / "src"
    files = [*root.glob("cryograd/solvers/*.py"), *root.glob("cryograd/reconstruction/*.py")]
    name_of = {f: ".".join(f.relative_to(root).with_suffix("").parts) for f in files}
    name_of = {f: n.removesuffix(".__init__") for f, n in name_of.items()}
    ours = set(name_of.values())
    graph: dict[str, set[str]] = {}
    for f, mod in name_of.items():
        tree = ast.parse(f.read_text())
        deps = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                deps.update(t for t in targets if t in ours and t != mod)
        graph[mod] = deps
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                        "cryograd"
                    ):
                        assert node.module == "cryograd.kernels", (mod, fn.name, node.module)
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in graph.get(m, ()):
            assert state.get(d) != 1, f"import circle: {' -> '.join([*path, m, d])}"
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
