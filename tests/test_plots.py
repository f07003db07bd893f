"""Tests of cryograd.plots: the figures hold what they claim; files are written atomically."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from cryograd.plots import (
    fsc_figure,
    loss_figure,
    plot_fsc,
    plot_fsc_result,
    plot_loss,
)
from cryograd.validation import FSCResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _lines(fig):
    return fig.axes[0].get_lines()


def test_fsc_figure_has_threshold_line_and_resolution_marker():
    freqs = np.arange(33) / 64.0
    curve = 1.0 - np.arange(33) / 20.0
    fig = fsc_figure(freqs, {"unmasked": curve}, resolution_angstrom=7.5, threshold=0.143)
    lines = _lines(fig)
    labels = [ln.get_label() for ln in lines]
    assert "unmasked" in labels
    data = {ln.get_label(): ln for ln in lines}
    np.testing.assert_allclose(data["unmasked"].get_ydata(), curve)
    np.testing.assert_allclose(data["unmasked"].get_xdata(), freqs)
    horizontal = [ln for ln in lines if np.allclose(ln.get_ydata(), 0.143)]
    assert horizontal, "no line at FSC = 0.143"
    vertical = [ln for ln in lines if np.allclose(ln.get_xdata(), 1 / 7.5)]
    assert vertical, "resolution not marked"
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("7.50" in t for t in texts)


def test_fsc_figure_skips_infinite_resolution_and_none_curves():
    freqs = np.arange(9) / 16.0
    fig = fsc_figure(freqs, {"a": np.ones(9), "b": None}, resolution_angstrom=float("inf"))
    labels = [ln.get_label() for ln in _lines(fig)]
    assert "a" in labels and "b" not in labels
    assert not fig.axes[0].texts


def test_plot_fsc_writes_png_atomically(tmp_path):
    out = plot_fsc(tmp_path / "fsc.png", np.arange(9) / 16.0, {"x": np.linspace(1, 0, 9)})
    assert out == tmp_path / "fsc.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in tmp_path.iterdir()] == ["fsc.png"]


def test_plot_fsc_result(tmp_path):
    res = FSCResult(
        frequencies=np.arange(9) / 16.0,
        fsc_unmasked=np.linspace(1, 0, 9),
        fsc_masked=np.linspace(1, 0.1, 9),
        fsc_corrected=np.linspace(1, 0.05, 9),
        resolution_143_angstrom=3.1,
        resolution_05_angstrom=4.0,
        fsc_randomized_masked=np.zeros(9),
        randomize_from_shell=3,
    )
    out = plot_fsc_result(tmp_path / "f.png", res, title="t")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_failed_save_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "loss.png"
    path.write_bytes(b"old")

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        plot_loss(path, [3.0, 2.0, 1.0], [3.5, 2.5, 2.0])
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]


def test_loss_figure_train_and_validation(tmp_path):
    train, val = [3.0, 2.0, 1.5, 1.2], [3.2, 2.4, 2.1, 2.3]
    fig = loss_figure(train, val, best_epoch=3, log_y=True)
    data = {ln.get_label(): ln for ln in _lines(fig)}
    np.testing.assert_allclose(data["train"].get_ydata(), train)
    np.testing.assert_allclose(data["validation"].get_ydata(), val)
    np.testing.assert_allclose(data["train"].get_xdata(), [1, 2, 3, 4])
    assert "best epoch 3" in data
    assert fig.axes[0].get_yscale() == "log"
    out = plot_loss(tmp_path / "loss.pdf", train)
    assert out.read_bytes()[:4] == b"%PDF"
