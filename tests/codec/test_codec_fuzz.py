"""Fuzzing the decoder with forged files, in a worker process (tests/codec/fuzz_worker.py).

Every case is parsed and entropy-decoded (small images also run the tiny UNet and VAE) where a
segfault or a hang fails the test, naming the case, instead of killing pytest. Each case must end
in an image or a one-line BitstreamError, within 2 CPU seconds and 1 GiB of added resident memory,
both measured in the worker; the slowest and the largest case are reported at the end.
"""

import collections
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from codec.core.bitstream import (_FIXED, DEFAULT_MAX_PIXELS, MAGIC, MAX_SIDE_VALUES, MODES, BitstreamError, Header, _varint,
                                  pack, padded_size, parse, payload_count)
from codec.core.adapters import transform
from tests.codec.fuzz_worker import Worker

FORGED_CASES = 3000
MUTATED_CASES = 2000
LARGE_CASES = 300
MAX_CPU_S = 2.0
MAX_RSS_KIB = 1024 * 1024
# No shrinking: a crash costs a worker restart per attempt, and the first failing case is named in full.
FUZZ = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate])
SIZES = [1, 7, 63, 64, 65, 127, 128, 129, 512, 1535, 1536, 1537, 2048, 4096, 36296, 36864, 65535]


class Stats:
    def __init__(self):
        self.cases = collections.Counter()
        self.outcomes = collections.Counter()
        self.slowest = self.largest = None
        self.largest_area = 0  # padded pixels of the largest image that was entropy-decoded

    def add(self, kind: str, data: bytes, result: dict):
        self.cases[kind] += 1
        self.outcomes[result["outcome"]] += 1
        if result["outcome"] == "entropy-decoded":
            header, _ = parse(data)
            height, width = padded_size(header.height, header.width)
            self.largest_area = max(self.largest_area, height * width)
        if self.slowest is None or result["cpu_s"] > self.slowest[0]["cpu_s"]:
            self.slowest = (result, data)
        if self.largest is None or result["rss_kib"] > self.largest[0]["rss_kib"]:
            self.largest = (result, data)

    def lines(self) -> list[str]:
        def describe(entry):
            result, data = entry
            try:
                header, _ = parse(data)
                what = f"{header.mode} {header.width}x{header.height}"
            except BitstreamError:
                what = "unparsable file"
            return (f"{what}, {len(data)} bytes ({result['outcome']}): {result['cpu_s']:.3f} s CPU, "
                    f"{result['wall_s']:.3f} s wall, +{result['rss_kib'] / 1024:.0f} MiB RSS "
                    f"(worker at {result['base_rss_kib'] / 1024:.0f} MiB)")
        return [f"fuzz: {sum(self.cases.values())} cases {dict(self.cases)}; outcomes {dict(self.outcomes)}; "
                f"largest entropy-decoded image {self.largest_area:,} padded pixels",
                f"fuzz: slowest case {describe(self.slowest)}", f"fuzz: largest case {describe(self.largest)}"]


STATS = Stats()  # printed at the end of the run by tests/codec/conftest.py


@pytest.fixture(scope="module")
def worker(tiny_codec):
    w = Worker()
    # The worker builds the same seeded models: its files are this process's files.
    assert w.hello == {"backbone": tiny_codec.backbone.fingerprint.hex(), "adapter": tiny_codec.adapters["learned"].fingerprint.hex()}
    yield w
    w.close()


def check(worker, kind: str, data: bytes) -> dict:
    result = worker.run(data)
    STATS.add(kind, data, result)
    assert not result["outcome"].startswith("error"), f"{result['outcome']} on case {data.hex()}"
    assert result["cpu_s"] <= MAX_CPU_S, f"{result['cpu_s']:.2f} CPU seconds on case {data.hex()}"
    assert result["rss_kib"] <= MAX_RSS_KIB, f"+{result['rss_kib'] / 1024:.0f} MiB on case {data.hex()}"
    return result


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _payload():
    word = st.sampled_from([b"\0\0\0\0", b"\xff\xff\xff\xff", b"\0\0\0\x80", b"\xff\xff\xff\x7f"])
    repeated = st.tuples(word, st.integers(0, 200)).map(lambda wn: wn[0] * wn[1])
    words = st.integers(0, 64).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))
    return st.one_of(st.just(b""), st.binary(max_size=16), repeated, words, st.binary(max_size=600))


def _half_floats(n: int, low: float, high: float):
    valid = st.lists(st.floats(low, high, width=16), min_size=n, max_size=n).map(
        lambda v: struct.pack(f"<{n}e", *v))
    return st.one_of(valid, valid, valid, st.binary(min_size=2 * n, max_size=2 * n))


@st.composite
def _transform_side_info(draw, channels: int, height: int, width: int) -> bytes:
    """Side information in the analytic adapter's transform layout for this image: C(C-1)/2 rotation
    angles (within -pi..pi, or any values) and C x bands scales (0 = off)."""
    latent = [side // 8 for side in padded_size(height, width)]  # the tiny backbone's /8
    angles = channels * (channels - 1) // 2
    count = channels * transform.band_count(*latent)
    scales = st.lists(st.one_of(st.just(0.0), st.floats(2.0**-10, 1024.0, width=16)), min_size=count, max_size=count)
    return draw(_half_floats(angles, -3.140625, 3.140625)) + draw(st.one_of(scales.map(lambda v: struct.pack(f"<{count}e", *v)),
                                                                    _half_floats(count, 2.0**-7, 128.0)))


@st.composite
def forged_files(draw, backbone_fp: bytes, adapter_fp: bytes):
    """Header fields drawn from anything to sane, payloads from empty to random, behind a valid CRC;
    mostly version 3 (zigzag symbols), also 2 (value order; both with t = 0 and any side-information
    count) and 1 (stored/v1 layout)."""
    version = draw(st.sampled_from([3, 3, 3, 2, 2, 1]))
    mode_id = draw(st.one_of(st.integers(0, 1), st.integers(0, 1), st.integers(0, 255)))
    mode = MODES[mode_id] if mode_id < len(MODES) else "learned"
    right_adapter = adapter_fp if mode == "learned" else bytes(4)
    fingerprints = draw(st.sampled_from([backbone_fp + right_adapter] * 8 + [backbone_fp + adapter_fp, b""]))
    if not fingerprints:
        fingerprints = draw(st.binary(min_size=8, max_size=8))
    side = st.one_of(st.integers(1, 200), st.sampled_from(SIZES), st.integers(0, 65535))
    height, width = draw(side), draw(side)
    t = draw(st.one_of(st.integers(0, 100), st.just(0), st.integers(0, 65535)))
    steps = 0 if t == 0 and draw(st.integers(0, 3)) else draw(st.one_of(st.integers(1, 4), st.integers(0, 255)))
    channels = draw(st.one_of(st.just(4), st.integers(0, 255)))
    fixed = _FIXED.pack(MAGIC, version, mode_id, fingerprints[:4], fingerprints[4:], height, width, t, steps, channels)
    n = min(channels, 16)
    floats = draw(_half_floats(n, 2.0**-10, 1024.0)) + draw(_half_floats(n, -128.0, 128.0))
    side = n if mode == "analytic" else 0  # what the adapter expects (analytic: its per-channel format)
    values = None
    if version >= 2 and mode == "analytic" and n and draw(st.booleans()):
        values = draw(_transform_side_info(n, height, width))  # or its transform format, for this shape
        side = len(values) // 2
    if version >= 2:
        side = draw(st.one_of(st.just(side), st.just(side), st.integers(0, 8), st.sampled_from([MAX_SIDE_VALUES, 2**21])))
        floats += _varint(side)
    floats += values if values is not None and len(values) == 2 * side else draw(_half_floats(min(side, 64), 2.0**-7, 128.0))
    payloads = [draw(_payload()) for _ in range(draw(st.sampled_from([payload_count(mode)] * 9 + [0, 1, 3])))]
    lengths = b"".join(_varint(len(p)) for p in payloads)
    if draw(st.integers(0, 19)) == 0:
        lengths = draw(st.binary(max_size=6))
    return _with_crc(fixed + floats + lengths + b"".join(payloads))


@pytest.mark.slow
@settings(max_examples=FORGED_CASES, **FUZZ)
@given(data=st.data())
def test_forged_files_decode_or_are_refused_within_limits(worker, data):
    backbone_fp, adapter_fp = (bytes.fromhex(worker.hello[k]) for k in ("backbone", "adapter"))
    check(worker, "forged", data.draw(forged_files(backbone_fp, adapter_fp)))


@st.composite
def large_files(draw, backbone_fp: bytes, adapter_fp: bytes):
    """Valid headers declaring images up to the pixel limit (any aspect ratio), with empty, tiny or junk payloads."""
    mode = draw(st.sampled_from(MODES))
    width = draw(st.one_of(st.sampled_from([64, 1536, 2304, 36864]), st.integers(1, DEFAULT_MAX_PIXELS // 64)))
    tallest = DEFAULT_MAX_PIXELS // padded_size(1, width)[1] // 64 * 64
    height = draw(st.one_of(st.just(tallest), st.integers(max(1, tallest // 4), tallest)))
    t = draw(st.integers(0, 100))
    half = st.floats(2.0**-6, 64.0, width=16)
    side_info = ()
    if mode == "analytic":  # the per-channel format, or the transform format (6 angles, scales or off)
        bands = 4 * transform.band_count(*(side // 8 for side in padded_size(height, width)))
        angle = st.floats(-3.140625, 3.140625, width=16)
        side_info = draw(st.one_of(st.tuples(*[half] * 4), st.tuples(*[angle] * 6, *[st.one_of(st.just(0.0), half)] * bands)))
    header = Header(mode=mode, backbone_fingerprint=backbone_fp,
                    adapter_fingerprint=adapter_fp if mode == "learned" else bytes(4), height=height, width=width,
                    t=t, steps=draw(st.integers(min(t, 1), min(t, 20))), scale=tuple(draw(half) for _ in range(4)),
                    shift=(0.0,) * 4, side_info=side_info)
    return pack(header, [draw(_payload()) for _ in range(payload_count(mode))])


@pytest.mark.slow
@settings(max_examples=LARGE_CASES, **FUZZ)
@given(data=st.data())
def test_large_declared_sizes_with_tiny_payloads_decode_within_limits(worker, data):
    backbone_fp, adapter_fp = (bytes.fromhex(worker.hello[k]) for k in ("backbone", "adapter"))
    check(worker, "large", data.draw(large_files(backbone_fp, adapter_fp)))


@pytest.fixture(scope="module")
def valid(tiny_codec, photo):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8))
    stored = [(Path(__file__).parent / "data" / f"{name}.dfc").read_bytes()  # the tiny codec's
              for name in ("v1-learned", "v1-analytic", "v2-learned", "v2-analytic")]
    return stored + [tiny_codec.encode(image, mode=mode, **knob).data
                        for image in (photo, noise)
                        for mode, knob in (("learned", {"lam": 10.0}), ("analytic", {"step": 1.0}), ("analytic", {"step": 8.0}))]


@pytest.mark.slow
@settings(max_examples=MUTATED_CASES, **FUZZ)
@given(data=st.data())
def test_mutated_valid_files_decode_or_are_refused_within_limits(worker, valid, data):
    """Real files (version 3, and the stored version-1 and version-2 files) with header fields, payload bytes or
    payload lengths rewritten, and the CRC fixed."""
    blob = data.draw(st.sampled_from(valid))
    header, payloads = parse(blob)
    body = bytearray(blob[:-4])
    start = len(body) - sum(len(p) for p in payloads)
    how = data.draw(st.sampled_from(["header", "payload", "both", "resize"]))
    if how == "resize":  # keep a prefix of each payload (or extend it) and write consistent lengths
        cut = [p[:data.draw(st.integers(0, len(p) + 8))] + data.draw(st.binary(max_size=8)) for p in payloads]
        lengths_at = start - sum(len(_varint(len(p))) for p in payloads)
        body = bytearray(bytes(body[:lengths_at]) + b"".join(_varint(len(p)) for p in cut) + b"".join(cut))
    if how in ("header", "both"):
        for _ in range(data.draw(st.integers(1, 4))):
            body[data.draw(st.integers(3, start - 1))] = data.draw(st.integers(0, 255))
    if how in ("payload", "both"):
        for _ in range(data.draw(st.integers(1, 8))):
            body[data.draw(st.integers(start, len(body) - 1))] = data.draw(st.integers(0, 255))
    check(worker, "mutated", _with_crc(bytes(body)))


def test_enough_cases_ran_and_no_case_was_slow_or_large():
    """The fuzz tests above ran in full (this file's tests run in order); skipped when run alone."""
    if not STATS.cases:
        pytest.skip("run with the fuzz tests")
    counts = {"forged": FORGED_CASES, "mutated": MUTATED_CASES, "large": LARGE_CASES}
    assert all(STATS.cases[kind] >= n for kind, n in counts.items()), STATS.lines()
    assert STATS.outcomes["decoded"] and STATS.outcomes["entropy-decoded"] and STATS.outcomes["refused"], STATS.lines()
    assert STATS.largest_area > 2_000_000, STATS.lines()  # some case entropy-decoded a latent near the pixel limit


def test_a_segfault_in_the_worker_fails_the_case_instead_of_killing_pytest(tiny_codec, photo):
    data = tiny_codec.encode(photo, step=1.0, mode="analytic").data
    crashing = Worker("--crash-on", data.hex())
    try:
        assert crashing.run(data[:-1])["outcome"] == "refused"  # the worker works until the crashing case
        with pytest.raises(AssertionError, match=f"fuzz worker died \\(exit status -11\\) on case {data.hex()}"):
            crashing.run(data)
    finally:
        crashing.close()

