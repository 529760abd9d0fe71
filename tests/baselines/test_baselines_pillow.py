import io

import numpy as np
import pytest
from PIL import Image

from codec.evaluate import baselines
from codec.evaluate.baselines import METHODS, decode, encode_at_bpp, encode_at_quality
from codec.evaluate.metrics import psnr

from tests.photos import PHOTOS, photo


def _check_real_decode(result, original):
    assert result.image.size == original.size
    assert result.bpp == 8 * len(result.data) / (original.width * original.height)
    # The reconstruction is what the bytes decode to, and it is lossy.
    with Image.open(io.BytesIO(result.data)) as again:
        assert np.array_equal(np.asarray(again.convert("RGB")), np.asarray(result.image))
    assert np.array_equal(np.asarray(decode(result.data, result.method)), np.asarray(result.image))
    assert not np.array_equal(np.asarray(result.image), np.asarray(original))
    assert psnr(result.image, original) > 15


@pytest.mark.parametrize("method", METHODS)
def test_targets_from_0_1_to_1_bpp_are_hit_without_exceeding(bee, method):
    for target in (0.1, 0.25, 0.5, 1.0):
        r = encode_at_bpp(bee, method, target)
        assert r.reached and r.method == method and r.label
        assert r.bpp <= target
        assert r.bpp >= 0.6 * target, f"{method} at {target}: only {r.bpp:.3f} bpp"
        # The next quality up would have gone over the target (or does not exist).
        if r.quality < baselines._PILLOW[method].q_max:
            assert encode_at_quality(bee, method, r.quality + 1).bpp > target
        _check_real_decode(r, bee)
        assert r.encode_s > 0 and r.decode_s > 0 and r.search_s >= r.encode_s and r.iterations >= 2


@pytest.mark.parametrize("method", METHODS)
def test_odd_sizes_work(method):
    im = photo("kite").crop((200, 100, 323, 177))  # 123 x 77
    r = encode_at_bpp(im, method, 4.0)
    assert r.reached and r.bpp <= 4.0
    _check_real_decode(r, im)


@pytest.mark.parametrize("method", METHODS)
def test_unreachable_target_reports_the_bpp_actually_reached(bee, method):
    r = encode_at_bpp(bee, method, 0.001)
    assert not r.reached
    assert r.quality == baselines._PILLOW[method].q_min
    assert r.iterations == 1
    assert r.bpp == 8 * len(r.data) / (bee.width * bee.height) > 0.001
    _check_real_decode(r, bee)


def test_avif_is_encoded_at_speed_6(bee):
    r = encode_at_bpp(bee, "avif", 0.3)
    buf = io.BytesIO()
    bee.save(buf, "AVIF", quality=int(r.quality), speed=6, subsampling="4:2:0")
    assert r.data == buf.getvalue()


@pytest.mark.parametrize("method", METHODS)
def test_fast_settings_hit_the_target_and_say_so(bee, method):
    r = encode_at_bpp(bee, method, 0.3, fast=True)
    assert r.reached and r.bpp <= 0.3
    _check_real_decode(r, bee)
    if method != "jpeg":
        assert r.label != encode_at_quality(bee, method, 10).label
        assert r.label == encode_at_quality(bee, method, 10, fast=True).label


def test_metadata_is_not_counted():
    with Image.open(PHOTOS / "cups.png") as f:
        assert "icc_profile" in f.info
        with_icc = f.convert("RGB").crop((0, 0, 256, 160))
    assert "icc_profile" in with_icc.info
    bare = Image.fromarray(np.asarray(with_icc))
    for method in METHODS:
        assert encode_at_quality(with_icc, method, 30).data == encode_at_quality(bare, method, 30).data


def test_bad_arguments(bee):
    with pytest.raises(ValueError, match="unknown baseline"):
        encode_at_bpp(bee, "bpg", 0.5)
    with pytest.raises(ValueError, match="positive"):
        encode_at_bpp(bee, "jpeg", 0)
    with pytest.raises(TypeError):
        encode_at_bpp(np.zeros((8, 8, 3), np.uint8), "jpeg", 0.5)
