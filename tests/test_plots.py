"""Tests of the evaluation plots."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from timemar_engine.plots import plot_evaluation  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_plot_evaluation_writes_pngs(tmp_path):
    rng = np.random.default_rng(0)
    real, fake = rng.random((60, 12, 3)), rng.random((40, 12, 3)) ** 2
    paths = plot_evaluation(real, fake, tmp_path / "sub" / "eval.png", seed=1, max_points=30,
                            tsne_iter=250, channel_names=["a", "b", "c"], title="random")
    assert [p.name for p in paths] == ["eval.png", "eval_channels.png"]
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG)


def test_plot_evaluation_flatten_and_many_channels(tmp_path):
    rng = np.random.default_rng(1)
    real, fake = rng.random((25, 4, 70)), rng.random((25, 4, 70))
    paths = plot_evaluation(real, fake, tmp_path / "wide.png", max_points=20, embed="flatten",
                            tsne_iter=250)
    assert [p.name for p in paths] == ["wide.png"]          # no per-channel grid when C > 64
    assert paths[0].stat().st_size > 1000


def test_plot_evaluation_validation(tmp_path):
    x = np.random.default_rng(2).random((10, 5, 2))
    with pytest.raises(ValueError, match=r"\(N, T, C\)"):
        plot_evaluation(x[0], x, tmp_path / "a.png")
    with pytest.raises(ValueError, match="differ"):
        plot_evaluation(x, x[:, :4], tmp_path / "a.png")
    with pytest.raises(ValueError, match="embed"):
        plot_evaluation(x, x, tmp_path / "a.png", embed="pca")
    with pytest.raises(ValueError, match="channel names"):
        plot_evaluation(x, x, tmp_path / "a.png", channel_names=["only one"], tsne_iter=250)
