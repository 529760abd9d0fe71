"""The decoder's limits (docs/bitstream.md, "Decoder limits"): every file is bounded by settings.

Files that once crashed the process (issue 9) are decoded in the fuzz worker or the CLI, in a
subprocess, so that a regression fails the test instead of killing pytest.
"""

import struct
import subprocess
import sys
import zlib

import pytest
import torch
from compressai.ans import RansDecoder
from PIL import Image

from codec.core import bitstream
from codec.core.adapters.base import MAX_SYMBOL_MAGNITUDE, GaussianCoder, Quantization
from codec.core.bitstream import (DEFAULT_MAX_PIXELS, DEFAULT_MAX_STEPS, BitstreamError, Header, check_rans_payload,
                             max_rans_payload_bytes, pack, parse, rans_decoder_input)
from codec.core.images import ImageError
from tests.codec.fuzz_worker import Worker

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def forged(codec, mode="analytic", height=64, width=64, t=5, steps=2, payloads=None, adapter_fp=None,
           steps_field=None, side_info=None, t_field=None) -> bytes:
    """A file with a valid header and CRC for `codec`, and whatever payloads (default: empty).

    `adapter_fp`, `t_field` and `steps_field` write those fields by hand: pack refuses what the parser must refuse.
    `side_info` defaults to what the mode's adapter expects (analytic: 4 prior scales).
    """
    learned = mode == "learned"
    header = Header(mode=mode, backbone_fingerprint=codec.backbone.fingerprint,
                    adapter_fingerprint=codec.adapters[mode].fingerprint, height=height, width=width,
                    t=t, steps=steps, scale=(1.0,) * 4, shift=(0.0,) * 4,
                    side_info=side_info if side_info is not None else () if learned else (1.0,) * 4)
    data = bytearray(pack(header, payloads or [b""] * bitstream.payload_count(mode)))
    if adapter_fp is not None:
        data[8:12] = adapter_fp
    if t_field is not None:
        data[16:18] = struct.pack("<H", t_field)
    if steps_field is not None:
        data[18] = steps_field
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    return bytes(data)


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def test_the_49_byte_attack_file_is_refused_by_the_cli(tiny_codec, tmp_path):
    """Issue 9: 1536x1536, empty payload, valid CRC: a segfault of `python -m codec decode`."""
    data = forged(tiny_codec, height=1536, width=1536)
    assert len(data) == 50  # issue 9's 49 bytes, and version 2's side-information count
    (tmp_path / "attack.dfc").write_bytes(data)
    run = subprocess.run([sys.executable, "-m", "codec", "decode", tmp_path / "attack.dfc", tmp_path / "out.png",
                          "--backbone", "tiny"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1, run.stderr[-2000:]  # not -11
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: An entropy-coded payload of 0 bytes cannot hold 147,456 symbols (it must be a multiple "
                      "of 4 bytes between 8 and 1,179,656): the file is damaged or forged."], run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("side", [384, 512, 1536])
@pytest.mark.parametrize("mode", ["analytic", "learned"])
def test_empty_and_short_payloads_are_refused_or_decoded_safely(tiny_codec, worker, mode, side):
    """Empty payloads (fine at 384, a segfault from 512 before) are refused; 8 bytes or a string of
    0xFF (which sends the decoder deep into bypass mode) decode to some image, in the worker."""
    n = bitstream.payload_count(mode)
    assert worker.run(forged(tiny_codec, mode, side, side))["outcome"] == "refused"
    for payload in (b"\0" * 8, b"\xff" * 64, b"\xff" * 4 * 1000):
        assert worker.run(forged(tiny_codec, mode, side, side, payloads=[payload] * n))["outcome"] == "entropy-decoded"


def test_payload_lengths_are_checked_before_anything_is_decoded(tiny_codec, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decompress called")

    for adapter in tiny_codec.adapters.values():
        monkeypatch.setattr(adapter, "decompress", fail)
    symbols = 4 * 8 * 8  # a 64x64 image: a 4 x 8 x 8 latent
    for payload, mode in ((b"", "analytic"), (b"\0" * 7, "analytic"), (b"\0" * 13, "analytic"),
                          (b"\0" * (max_rans_payload_bytes(symbols) + 4), "analytic"), (b"\0" * 9, "learned")):
        with pytest.raises(BitstreamError, match="cannot hold"):
            tiny_codec.dequantize(forged(tiny_codec, mode, payloads=[payload] * bitstream.payload_count(mode)))


@pytest.mark.parametrize("mode,side_info,message", [
    ("analytic", (1.0,) * 3, "carries 4 prior scales as side information; this one has 3 values"),
    ("analytic", (1.0,) * 5, "carries 4 prior scales as side information; this one has 5 values"),
    ("analytic", (1.0, 1.0, -1.0, 1.0), "prior scales \\(they must be positive"),
    ("learned", (1.0,), "has no side information; this one has 1 values"),
])
def test_side_information_is_checked_by_the_adapter_before_anything_is_decoded(tiny_codec, monkeypatch, mode,
                                                                                side_info, message):
    """The format bounds the side information; the file's adapter checks that it is what it writes."""
    for adapter in tiny_codec.adapters.values():
        monkeypatch.setattr(adapter, "decompress", lambda *a: pytest.fail("decompress called"))
    data = forged(tiny_codec, mode, side_info=side_info, payloads=[b"\0" * 8] * bitstream.payload_count(mode))
    assert parse(data)[0].side_info == side_info  # format-valid
    with pytest.raises(BitstreamError, match=message):
        tiny_codec.dequantize(data)


@pytest.mark.parametrize("mode", ["analytic", "learned"])
def test_timesteps_above_the_adapters_t_max_are_refused(tiny_codec, mode):
    t_max = tiny_codec.adapters[mode].t_max
    assert parse(forged(tiny_codec, mode, t=t_max + 1))[0].t == t_max + 1  # format-valid: t <= 999
    with pytest.raises(BitstreamError, match=f"t={t_max + 1} exceeds this adapter's maximum {t_max}"):
        tiny_codec.parse(forged(tiny_codec, mode, t=t_max + 1))
    assert tiny_codec.parse(forged(tiny_codec, mode, t=t_max)).t == t_max


def test_the_longest_payload_the_encoder_can_write_is_allowed():
    """Every symbol an escape with the largest value the adapters code: 16 + 4 x 8 bits per symbol,
    in value order (versions 1 and 2) and zigzag order (version 3)."""
    from compressai.entropy_models import GaussianConditional
    from compressai.models import get_scale_table

    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table(), force=True)
    for symbols in (1, 7, 1000):
        z = torch.full((1, 1, 1, symbols), -(MAX_SYMBOL_MAGNITUDE - 1.0))  # far outside every CDF: escapes
        scales = torch.full_like(z, 0.11)
        (string,) = gc.compress(z, gc.build_indexes(scales), means=torch.zeros_like(z))
        assert len(string) >= 8 + 5.5 * symbols - 4  # the escapes really are written (48 bits each)
        check_rans_payload(string, symbols)
        decoded = gc.decompress([rans_decoder_input(string, symbols)], gc.build_indexes(scales), means=torch.zeros_like(z))
        assert torch.equal(decoded, z)  # padding never changes what a real string decodes to
        zigzag = GaussianCoder(gc).compress(z, gc.build_indexes(scales), torch.zeros_like(z), zigzag=True)  # version 3
        assert len(zigzag) == len(string)  # its escapes have value order's bypass bits
        check_rans_payload(zigzag, symbols)
        decoded = GaussianCoder(gc).decompress(rans_decoder_input(zigzag, symbols), gc.build_indexes(scales),
                                               torch.zeros_like(z), zigzag=True)
        assert torch.equal(decoded, z)


@pytest.mark.parametrize("fill", [b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"random"])
def test_the_rans_decoder_never_reads_past_the_padding(fill):
    """The bound of docs/bitstream.md against the real decoder: what it returns never depends on
    the bytes after the padding, while without padding it does read past the payload."""
    import numpy as np
    from compressai.entropy_models import GaussianConditional
    from compressai.models import get_scale_table

    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table(), force=True)
    tables = gc._quantized_cdf.tolist(), gc._cdf_length.reshape(-1).int().tolist(), gc._offset.reshape(-1).int().tolist()
    decoder, rng = RansDecoder(), np.random.default_rng(0)
    read_past_payload = False
    for trial in range(40):
        symbols = int(rng.integers(1, 300))
        words = 2 + int(rng.integers(0, 2 * symbols + 1))
        payload = rng.bytes(4 * words) if fill == b"random" else fill * words
        indexes = [int(i) for i in rng.integers(0, len(tables[1]), symbols)]
        tails = [np.random.default_rng(seed).bytes(1 << 16) for seed in (1, 2)]  # room for a wrong bound to show
        padded = rans_decoder_input(payload, symbols)
        outputs = [decoder.decode_with_indexes(padded + tail, indexes, *tables) for tail in tails]
        assert outputs[0] == outputs[1], (symbols, words)
        unpadded = [decoder.decode_with_indexes(payload + tail, indexes, *tables) for tail in tails]
        read_past_payload |= unpadded[0] != unpadded[1]
    assert read_past_payload or fill != b"\xff\xff\xff\xff"  # all ones: every count nibble is 15, deep bypass


def test_max_pixels_counts_the_padded_area(tiny_codec):
    limit = 1536 * 1536
    with pytest.raises(BitstreamError) as refused:  # 65 x 36296 = 2,359,240 pixels, padded 128 x 36352
        parse(forged(tiny_codec, height=36296, width=65), max_pixels=limit)
    assert str(refused.value) == ("The image is 65x36296, coded as 128x36352 = 4,653,056 pixels (padded to multiples "
                                  "of 64); the limit is 2,359,296 pixels.")
    with pytest.raises(BitstreamError, match="1600x1536 = 2,457,600 pixels .* the limit is 2,359,296 pixels"):
        parse(forged(tiny_codec, height=1536, width=1537), max_pixels=limit)
    assert parse(forged(tiny_codec, height=36864, width=64), max_pixels=limit)[0].height == 36864  # exactly the limit
    assert parse(forged(tiny_codec, height=1536, width=1536), max_pixels=limit)[0].width == 1536


def test_the_encoder_refuses_images_whose_padded_area_exceeds_the_limit(tiny_codec, monkeypatch):
    monkeypatch.setattr(tiny_codec, "max_pixels", 128 * 128)
    with pytest.raises(ImageError, match="129x100, coded as 192x128 = 24,576 pixels .* the limit is 16,384 pixels"):
        tiny_codec.encode(Image.new("RGB", (129, 100)), step=1.0, mode="analytic")  # 12,900 pixels unpadded
    assert tiny_codec.encode(Image.new("RGB", (128, 128)), step=1.0, mode="analytic").data


def test_steps_are_bounded_by_t_and_by_max_steps(tiny_codec, photo):
    assert tiny_codec.max_steps == DEFAULT_MAX_STEPS
    with pytest.raises(BitstreamError, match="steps 6 for t=5"):
        parse(forged(tiny_codec, t=5, steps_field=6))
    with pytest.raises(BitstreamError, match="steps 0 for t=5"):
        parse(forged(tiny_codec, t=5, steps_field=0))
    with pytest.raises(BitstreamError, match="steps 1 for t=0"):  # t = 0: no denoising, no steps
        parse(forged(tiny_codec, t=1, steps=1, t_field=0))
    data = forged(tiny_codec, t=DEFAULT_MAX_STEPS + 1, steps=DEFAULT_MAX_STEPS + 1)
    with pytest.raises(BitstreamError, match=f"asks for {DEFAULT_MAX_STEPS + 1} denoising steps; this decoder's limit is {DEFAULT_MAX_STEPS}"):
        tiny_codec.parse(data)
    assert parse(data)[0].steps == DEFAULT_MAX_STEPS + 1  # a format-valid file: the limit is the decoder's setting
    with pytest.raises(ValueError, match="steps must be between 1 and 20"):
        tiny_codec.encode(photo, step=1.0, mode="analytic", steps=DEFAULT_MAX_STEPS + 1)
    from codec.core.diffusion_codec import DiffusionCodec

    # learned mode: the tiny backbone's analytic files have t <= 1 (its latent's error is that small)
    strict = DiffusionCodec(tiny_codec.backbone, tiny_codec.adapters["learned"], max_steps=1)
    result = strict.encode(photo, lam=1.0)  # the backbone's default_steps (2) would exceed the setting
    assert result.t > 1 and result.steps == 1 and strict.decode(result.data).image.size == photo.size


def test_analytic_files_with_an_adapter_fingerprint_are_refused(tiny_codec):
    with pytest.raises(BitstreamError, match="analytic-mode file must have a zero adapter fingerprint"):
        parse(forged(tiny_codec, payloads=[b"\0" * 8], adapter_fp=b"\1\2\3\4"))
    with pytest.raises(ValueError, match="zero adapter fingerprint"):
        pack(Header(mode="analytic", backbone_fingerprint=bytes(4), adapter_fingerprint=b"\1\2\3\4", height=8, width=8,
                    t=5, steps=2, scale=(1.0,) * 4, shift=(0.0,) * 4, side_info=(1.0,) * 4), [b"\0" * 8])


def test_cli_info_uses_the_apps_pixel_limit_and_max_pixels_overrides_it(tiny_codec, tmp_path, capsys):
    from codec.__main__ import main  # in-process: `info` only parses (decoding runs in subprocesses above)
    from ui.settings import Settings

    assert Settings().max_pixels == DEFAULT_MAX_PIXELS  # the CLI's default is the app's
    path = tmp_path / "wide.dfc"
    path.write_bytes(forged(tiny_codec, height=1536, width=1537, payloads=[b"\0" * 8]))
    assert main(["info", str(path)]) == 1
    assert capsys.readouterr().err.strip().endswith("the limit is 2,359,296 pixels.")
    assert main(["info", str(path), "--max-pixels", str(1600 * 1536)]) == 0
    assert '"width": 1537' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["info", str(path), "--max-pixels", "0"])
    assert "'0' is not a positive integer" in capsys.readouterr().err


def test_the_encoder_refuses_latents_beyond_the_coders_range(tiny_codec):
    """compressai's encoder would loop forever on them (escape values of 2**28 and more)."""
    q = Quantization(scale=(1.0,) * 4, shift=(0.0,) * 4, t=5, side_info=(1.0,) * 4)
    for value in (float(MAX_SYMBOL_MAGNITUDE), float("nan")):
        z = torch.full((1, 4, 2, 2), value)
        for adapter in tiny_codec.adapters.values():
            with pytest.raises(ValueError, match="out of the entropy coder's range"):
                adapter.compress(z, q)
