"""Forged, truncated and bit-flipped files must raise BitstreamError and nothing else, quickly.

The parser is pure Python; decoding forged files (native code) is fuzzed in a worker process by
test_codec_fuzz.py.
"""

import os
import struct
import time
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.core.bitstream import (FINGERPRINT_BYTES, MAGIC, MAX_SIDE_VALUES, READABLE_VERSIONS, BitstreamError, Header,
                                  _varint, pack, parse)

CASES = 2000 if os.environ.get("CI") else 300
FUZZ = settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def valid(tiny_codec, photo):
    return {mode: tiny_codec.encode(photo, mode=mode, **knob).data
            for mode, knob in (("learned", {"lam": 10.0}), ("analytic", {"step": 1.0}))}


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _only_bitstream_errors(data: bytes) -> None:
    start = time.perf_counter()
    tracemalloc.start()
    try:
        parse(data)
    except BitstreamError as exc:
        assert str(exc) and "\n" not in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 4 * len(data) + 1_000_000  # no allocation driven by a forged length


def test_valid_files_parse(valid):
    for mode, data in valid.items():
        header, payloads = parse(data)
        assert header.mode == mode and len(payloads) == (2 if mode == "learned" else 1)


@FUZZ
@given(data=st.data())
def test_truncated_files(valid, data):
    mode = data.draw(st.sampled_from(sorted(valid)))
    blob = valid[mode]
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(BitstreamError):
        parse(blob[:cut])


@FUZZ
@given(data=st.data())
def test_bit_flipped_files(valid, data):
    mode = data.draw(st.sampled_from(sorted(valid)))
    blob = bytearray(valid[mode])
    for position in data.draw(st.lists(st.integers(0, 8 * len(blob) - 1), min_size=1, max_size=8, unique=True)):
        blob[position // 8] ^= 1 << (position % 8)
    with pytest.raises(BitstreamError):  # CRC32 detects every burst of up to 32 bits and all odd-weight errors
        parse(bytes(blob))


@FUZZ
@given(junk=st.binary(max_size=300), fix_crc=st.booleans(), keep_magic=st.booleans(),
       version=st.sampled_from(READABLE_VERSIONS))
def test_random_files_with_forged_checksums(junk, fix_crc, keep_magic, version):
    body = (MAGIC + bytes([version]) + junk) if keep_magic else junk
    _only_bitstream_errors(_with_crc(body) if fix_crc else body)


@FUZZ
@given(data=st.data())
def test_forged_header_fields_with_valid_checksum(valid, data):
    """Rewrite header fields (lengths, sizes, t, steps, channels, gamma) and recompute the CRC."""
    blob = bytearray(valid[data.draw(st.sampled_from(sorted(valid)))][:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        offset = data.draw(st.integers(5, min(len(blob) - 1, 80)))
        blob[offset] = data.draw(st.integers(0, 255))
    _only_bitstream_errors(_with_crc(bytes(blob)))


def test_huge_declared_length_is_refused_without_allocation(valid):
    header, payloads = parse(valid["analytic"])
    body = bytearray(valid["analytic"][:-4])
    varint = _varint(len(payloads[0]))
    length_at = len(body) - len(payloads[0]) - len(varint)
    assert bytes(body[length_at:length_at + len(varint)]) == varint
    before, after = bytes(body[:length_at]), bytes(body[length_at + len(varint):])
    with pytest.raises(BitstreamError, match="do not match"):
        parse(_with_crc(before + bytes([0xF0, 0xFF, 0xFF, 0x7F]) + after))  # declares ~256 MiB
    endless = before + bytes([0xFF] * 8) + after
    with pytest.raises(BitstreamError, match="Invalid payload length"):
        parse(_with_crc(endless))


HEADER = dict(mode="analytic", backbone_fingerprint=bytes(FINGERPRINT_BYTES), adapter_fingerprint=bytes(FINGERPRINT_BYTES),
              height=8, width=8, t=5, steps=2, scale=(1.0,) * 4, shift=(0.0,) * 4, side_info=(1.0,) * 4)


@pytest.mark.parametrize("change,message", [
    (lambda h: {**h, "t": 1000}, "timestep"),
    (lambda h: {**h, "t": 0}, "steps 2 for t=0"),  # no denoising: no steps
    (lambda h: {**h, "steps": 0}, "steps 0 for t=5"),
    (lambda h: {**h, "steps": 9}, "steps"),
    (lambda h: {**h, "scale": (0.0,) * 4}, "gamma"),
    (lambda h: {**h, "height": 0}, "size"),
    (lambda h: {**h, "side_info": (float("inf"),)}, "side information"),
    (lambda h: {**h, "side_info": (1.0,) * (MAX_SIDE_VALUES + 1)}, "side information"),
    (lambda h: {**h, "version": 2}, "writes bitstream version 3 only"),
])
def test_pack_refuses_invalid_headers(change, message):
    with pytest.raises(ValueError, match=message):
        pack(Header(**change(HEADER)), [b"x"])


def test_t_0_says_no_denoising():
    header, payloads = parse(pack(Header(**{**HEADER, "t": 0, "steps": 0}), [b"x" * 8]))
    assert (header.t, header.steps, header.version, payloads) == (0, 0, 3, [b"x" * 8])
    assert header.side_info == (1.0,) * 4 and header.as_dict()["format_version"] == 3


def test_side_information_count_is_bounded_before_it_is_read():
    data = pack(Header(**{**HEADER, "side_info": ()}), [b"x" * 8])
    count_at = 20 + 2 * 2 * 4  # fixed fields, then gamma
    assert data[count_at] == 0
    forged = data[:count_at] + _varint(MAX_SIDE_VALUES + 1) + data[count_at + 1:-4]
    with pytest.raises(BitstreamError, match=f"Too much side information \\({MAX_SIDE_VALUES + 1} values"):
        parse(_with_crc(forged))
    forged = data[:count_at] + _varint(MAX_SIDE_VALUES) + data[count_at + 1:-4]  # declared, not there
    with pytest.raises(BitstreamError, match="truncated inside its header"):
        parse(_with_crc(forged))
