"""The metric registry the evaluation and the Compress table read (codec/evaluate/metrics.py)."""

import numpy as np
import pytest

from codec.evaluate import metrics
from tests.photos import photo


def test_every_metric_that_runs_here_points_the_way_it_says(tmp_path, monkeypatch):
    """The declared direction is the real one: a slightly noisy copy scores better than a very
    noisy one. Offline that is PSNR, MS-SSIM and SWD; the others say they are unavailable."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    a = np.asarray(photo("bee", 192))
    rng = np.random.default_rng(0)
    slight, heavy = (np.clip(a + rng.normal(0, s, a.shape), 0, 255).astype(np.uint8) for s in (4, 40))
    runs = {name for name in metrics.PER_IMAGE if metrics.available(name)}
    assert runs == {"psnr", "ms_ssim", "swd"}
    for name in runs:
        m = metrics.PER_IMAGE[name]
        good, bad = m.fn(a, slight), m.fn(a, heavy)
        assert (good > bad) if m.higher_is_better else (good < bad), name
    for name, m in metrics.METRICS.items():
        assert m.name == name and m.label and m.json_key
        assert m.needs_weights == (name not in runs)  # raising MetricUnavailable: test_baselines_metrics
    assert set(metrics.PER_SET) == {"fid", "kid"} and not set(metrics.PER_SET) & set(metrics.PER_IMAGE)
    with pytest.raises(KeyError):
        metrics.available("bogus")
