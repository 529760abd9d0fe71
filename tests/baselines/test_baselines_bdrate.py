import math

import numpy as np
import pytest

from codec.evaluate.bdrate import (BDUndefined, bd_markdown, bd_quality, bd_rate, bd_tables, compare, msssim_db,
                                   per_image_markdown, per_image_tables, rd_curve)


def test_same_quality_at_70_percent_of_the_rate_is_minus_30_percent():
    rates = [0.05, 0.1, 0.2, 0.4]
    psnr = [26.0, 28.5, 30.2, 33.0]
    assert bd_rate(rates, psnr, [0.7 * r for r in rates], psnr) == pytest.approx(-30.0, abs=1e-9)
    assert bd_rate([0.7 * r for r in rates], psnr, rates, psnr) == pytest.approx(100 / 0.7 - 100, abs=1e-9)
    assert bd_rate(rates, psnr, rates, psnr) == pytest.approx(0.0, abs=1e-12)


def test_log_linear_curves_sampled_at_different_points():
    # Quality = 5 log2(rate) + 40 for the anchor; the test reaches it at half the rate, sampled
    # at other rates. Monotone cubic interpolation is exact on these curves: BD-rate = -50 %.
    def anchor(r):
        return 5 * np.log2(r) + 40

    def test(r):
        return 5 * np.log2(2 * r) + 40

    ra = np.array([0.06, 0.11, 0.23, 0.5])
    rt = np.array([0.04, 0.09, 0.13, 0.3, 0.45])
    assert bd_rate(ra, anchor(ra), rt, test(rt)) == pytest.approx(-50.0, abs=1e-9)
    # At equal rate the test is 5 dB better (one octave of rate at 5 dB per octave).
    assert bd_quality(ra, anchor(ra), rt, test(rt)) == pytest.approx(5.0, abs=1e-9)


def test_curves_of_different_slopes_by_hand():
    """Anchor q = 10 ln r + 50, test q = 5 ln r + 45 (both linear in log rate, where the
    interpolation is exact). At quality q the log-rate difference is (q-45)/5 - (q-50)/10 =
    q/10 - 4; over the common quality range [30, 40] its mean is 35/10 - 4 = -0.5, so BD-rate =
    e^-0.5 - 1 = -39.35 %. At log rate x the quality difference is -5x - 5; over the common
    log-rate range [-2, -1] its mean is 2.5 dB."""
    qa, qt = np.array([30.0, 33, 36, 40]), np.array([28.0, 32, 38, 42])
    ra, rt = np.exp((qa - 50) / 10), np.exp((qt - 45) / 5)
    assert bd_rate(ra, qa, rt, qt) == pytest.approx((math.exp(-0.5) - 1) * 100, abs=1e-9)
    assert bd_quality(ra, qa, rt, qt) == pytest.approx(2.5, abs=1e-9)


def test_only_the_overlap_counts_and_bad_curves_are_refused():
    rates, psnr = [0.1, 0.2, 0.4], [28.0, 30.0, 32.0]
    # The test curve extends further; only the common quality range is integrated.
    assert bd_rate(rates, psnr, [0.05, 0.1, 0.2, 0.4, 0.8], [26.0, 28.0, 30.0, 32.0, 34.0]) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(BDUndefined, match="overlap"):
        bd_rate(rates, psnr, rates, [40.0, 41.0, 42.0])
    with pytest.raises(BDUndefined, match="two points"):
        bd_rate([0.1], [30.0], rates, psnr)
    with pytest.raises(BDUndefined, match="differ"):
        bd_rate([0.1, 0.2], [30.0, 30.0], rates, psnr)
    with pytest.raises(ValueError, match="positive rates"):
        bd_quality([0.0, 0.2], [30.0, 31.0], rates, psnr)


def test_rd_curve_keeps_the_pareto_front_and_says_what_it_dropped():
    # JPEG at its floor: the same file at 0.03 and 0.05 bpp targets. A metric that gets worse at
    # a higher rate, and a point that was not measured.
    rates = [0.031, 0.031, 0.1, 0.2, 0.25, 0.4, None]
    quality = [24.0, 24.0, 27.0, 29.0, 28.5, 31.0, 30.0]
    r, q, notes = rd_curve(rates, quality, name="jpeg")
    assert (r, q) == ([0.031, 0.1, 0.2, 0.4], [24.0, 27.0, 29.0, 31.0])
    assert len(notes) == 3 and all(n.startswith("jpeg: ") for n in notes)
    assert any("repeated" in n and "0.031" in n for n in notes)
    assert any("0.25 bpp dropped" in n and "29 at 0.2 bpp" in n for n in notes)
    assert any("None" in n and "no value" in n for n in notes)
    # At one rate only the best quality counts.
    assert rd_curve([0.1, 0.1, 0.2], [20.0, 21.0, 22.0])[:2] == ([0.1, 0.2], [21.0, 22.0])


def test_a_repeated_point_no_longer_hides_the_bd_rate():
    clean = ([0.031, 0.1, 0.2, 0.4], [24.0, 27.0, 29.0, 31.0])
    repeated = ([0.031, 0.031, 0.1, 0.2, 0.4], [24.0, 24.0, 27.0, 29.0, 31.0])
    test = ([0.7 * r for r in clean[0]], clean[1])
    bd = compare(repeated, test, names=("jpeg", "ours"), quality_name="PSNR", quality_unit=" dB")
    assert bd.rate == pytest.approx(-30.0, abs=1e-9) and bd.note == ""
    assert bd.rate == pytest.approx(compare(clean, test).rate, abs=1e-12)
    assert len(bd.dropped) == 1 and bd.dropped[0].startswith("jpeg: 0.031 bpp repeated")


def test_no_overlap_in_quality_gives_bd_quality_where_rates_overlap():
    # Test = anchor + 10 dB everywhere, on the same rates: qualities never meet.
    rates = [0.1, 0.2, 0.4]
    bd = compare((rates, [28.0, 30.0, 32.0]), (rates, [38.0, 40.0, 42.0]), quality_name="PSNR", quality_unit=" dB")
    assert bd.rate is None and bd.quality == pytest.approx(10.0, abs=1e-9)
    assert bd.note == "no overlap in PSNR (BD-PSNR +10.00 dB)"
    # Neither range overlaps: nothing to say but that.
    bd = compare((rates, [28.0, 30.0, 32.0]), ([1.0, 2.0], [38.0, 40.0]), quality_name="PSNR")
    assert (bd.rate, bd.quality, bd.note) == (None, None, "no overlap in PSNR")
    bd = compare(([0.1, 0.1], [30.0, 30.0]), (rates, [28.0, 30.0, 32.0]), names=("jpeg", "ours"))
    assert bd.rate is None and bd.note == "jpeg: fewer than two usable points"


def _results(rates, psnr):
    """compressai-style results; MS-SSIM is PSNR - 10 on the dB scale."""
    return {"results": {"bpp": list(rates), "psnr-rgb": list(psnr),
                        "ms-ssim-rgb": [1 - 10 ** (-(q - 10) / 10) for q in psnr]}}


def test_tables_and_markdown_show_notes_instead_of_bare_na():
    results = {
        "ours": _results([0.035, 0.07, 0.14, 0.28], [25.0, 27.0, 29.0, 31.0]),
        "jpeg": _results([0.05, 0.05, 0.1, 0.2], [24.0, 24.0, 27.0, 29.0]),  # its floor, twice
        "webp": _results([0.035, 0.07, 0.14, 0.28], [35.0, 37.0, 39.0, 41.0]),  # far better: no overlap
    }
    tables = bd_tables(results)
    assert set(tables) == {"psnr", "ms-ssim"}
    assert tables["psnr"]["jpeg"]["jpeg"] is None
    cell = tables["psnr"]["ours"]["jpeg"]
    assert cell["bd_rate"] < 0 and cell["note"] == "" and cell["dropped"] == ["jpeg: 0.05 bpp repeated (the same rate and quality twice), one dropped"]
    assert tables["psnr"]["jpeg"]["ours"]["bd_rate"] > 0
    assert tables["psnr"]["webp"]["ours"]["bd_rate"] is None
    assert tables["psnr"]["webp"]["ours"]["bd_quality"] == pytest.approx(10.0, abs=1e-9)
    text = bd_markdown(tables)
    assert "n/a" not in text
    assert "no overlap in PSNR (BD-PSNR +10.00 dB)" in text
    assert text.count("jpeg: 0.05 bpp repeated") == 2  # once under each table (PSNR and MS-SSIM), not per cell
    assert f"| ours |  | {cell['bd_rate']:+.1f} |" in text
    # Other axes on request (SWD: lower is better, negated into a quality).
    results["ours"]["results"]["swd"] = [80.0, 60.0, 40.0, 30.0]
    results["jpeg"]["results"]["swd"] = [200.0, 200.0, 120.0, 70.0]
    swd = bd_tables(results, axes=("swd",))["swd"]
    assert swd["ours"]["jpeg"]["bd_rate"] < 0 and swd["ours"]["webp"] is None
    assert "| ours |  | " in bd_markdown({"swd": swd}) and "unavailable" in bd_markdown({"swd": swd})


def test_per_image_table_shows_the_outlier_image():
    base = [0.05, 0.1, 0.2, 0.4]
    psnr = [26.0, 28.0, 30.0, 32.0]
    by_image = {}
    for image, ratio in (("a.png", 0.7), ("b.png", 0.7), ("outlier.png", 2.0)):
        by_image[image] = {"jpeg": _results(base, psnr), "ours": _results([ratio * r for r in base], psnr)}
    tables = per_image_tables(by_image, anchor="jpeg")
    assert set(tables["psnr"]) == {"a.png", "b.png", "outlier.png"}
    assert tables["psnr"]["a.png"]["ours"]["bd_rate"] == pytest.approx(-30.0, abs=1e-9)
    assert tables["psnr"]["outlier.png"]["ours"]["bd_rate"] == pytest.approx(100.0, abs=1e-9)
    text = per_image_markdown(tables, anchor="jpeg")
    assert "| outlier.png | +100.0 |" in text and "| a.png | -30.0 |" in text
    assert "| **median** | -30.0 |" in text  # the median is not pulled by the one bad image
    assert "against jpeg" in text and "n/a" not in text
    # A dropped point says on which image it was.
    by_image["b.png"]["jpeg"] = _results([0.05, 0.05, 0.2, 0.4], [26.0, 26.0, 30.0, 32.0])
    text = per_image_markdown(per_image_tables(by_image, anchor="jpeg"), anchor="jpeg")
    assert "- jpeg on b.png: 0.05 bpp repeated" in text and "a.png: 0.05" not in text


def test_msssim_db():
    assert msssim_db(0.9) == pytest.approx(10.0)
    assert msssim_db(0.99) == pytest.approx(20.0)
    assert math.isinf(msssim_db(1.0))
