"""The container format (specified in docs/bitstream.md): pack, parse and validate.

The parser checks every field against the file's real length and sane ranges *before* using it,
so a forged or damaged file raises `BitstreamError` with a readable message and never causes a
large allocation, a crash or a hang further down the decoder.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"\xdf\xc0"  # 2 bytes: the header is kept small because it counts in every file's bpp
VERSION = 3  # the version this software writes; it reads 1, 2 and 3 (docs/bitstream.md)
READABLE_VERSIONS = (1, 2, 3)
ZIGZAG_VERSION = 3  # from this version on, latent payloads code their symbols in zigzag order (zigzag_order)
MODES = ("learned", "analytic")
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_CHANNELS = 16
MAX_TIMESTEP = 999
MAX_SIDE_VALUES = 16384  # float16 side-information values (32 KiB); each adapter checks its exact count
MAX_STEPS_FIELD = 255  # steps is one byte
PAD_MULTIPLE = 64  # images are padded to multiples of 64 (VAE /8 and hyperprior /4, with margin)

# Decoding limits: settings of the decoder (DiffusionCodec, the CLI, the app), not of the file. These
# defaults are the app's: a file may ask for at most this much work whatever its header says.
DEFAULT_MAX_PIXELS = 1536 * 1536  # of the padded image, the area the VAE and the UNet really process
DEFAULT_MAX_STEPS = 20  # DDIM steps (5x the demo backbone's default of 4, 2x Stable Diffusion's 10)

FINGERPRINT_BYTES = 4
# magic, version, mode, backbone fingerprint, adapter fingerprint, height, width, t, steps, channels
_FIXED = struct.Struct(f"<2sBB{FINGERPRINT_BYTES}s{FINGERPRINT_BYTES}sHHHBB")
_CRC = struct.Struct("<I")
_MAX_VARINT_BYTES = 4  # payload lengths are LEB128 varints below 2**28 (> MAX_FILE_BYTES)


class BitstreamError(ValueError):
    """A file that is not a valid bitstream for this codec, with a message meant for a person."""


@dataclass(frozen=True)
class Header:
    mode: str
    backbone_fingerprint: bytes  # FINGERPRINT_BYTES of the backbone's identity (see Backbone.fingerprint)
    adapter_fingerprint: bytes  # of the learned adapter; zero bytes in analytic mode
    height: int
    width: int
    t: int  # the timestep denoising starts from; 0 = no denoising (version 2 on)
    steps: int  # DDIM steps: 0 when t = 0, else 1..t
    scale: tuple[float, ...]  # gamma: per-channel scale a of z = a * y + b
    shift: tuple[float, ...]  # gamma: per-channel shift b
    side_info: tuple[float, ...] = ()  # the adapter's side information (analytic: per-channel prior scales)
    version: int = VERSION

    @property
    def channels(self) -> int:
        return len(self.scale)

    def as_dict(self) -> dict:
        return {
            "format_version": self.version,
            "mode": self.mode,
            "backbone_fingerprint": self.backbone_fingerprint.hex(),
            "adapter_fingerprint": self.adapter_fingerprint.hex(),
            "height": self.height,
            "width": self.width,
            "t": self.t,
            "steps": self.steps,
            "gamma_scale": list(self.scale),
            "gamma_shift": list(self.shift),
            "side_info": list(self.side_info),
        }


def quantize_side_info(values) -> tuple[float, ...]:
    """Round side information to float16 exactly as it will be stored, so encoder and decoder agree."""
    return tuple(float(v) for v in np.asarray(values, dtype=np.float16))


def zigzag_order(version: int) -> bool:
    """Whether a file of this version codes latent symbols in zigzag order (0, -1, +1, -2, +2, ...,
    docs/bitstream.md "Symbol order"): compressai's rANS decoder finds each symbol by a linear search
    from the start of its CDF table, so in value order a symbol near the middle of a wide table cost
    ~15 standard deviations of comparisons, in zigzag order ~1.5."""
    return version >= ZIGZAG_VERSION


def payload_count(mode: str) -> int:
    return 2 if mode == "learned" else 1  # learned: hyper-latent + latent; analytic: latent


def pack(header: Header, payloads: list[bytes]) -> bytes:
    """A file of the version this software writes (VERSION)."""
    if header.version != VERSION:
        raise ValueError(f"This software writes bitstream version {VERSION} only.")
    _validate_header(header)
    if len(payloads) != payload_count(header.mode):
        raise ValueError(f"mode {header.mode} needs {payload_count(header.mode)} payloads")
    parts = [
        _FIXED.pack(
            MAGIC, VERSION, MODES.index(header.mode), header.backbone_fingerprint,
            header.adapter_fingerprint, header.height, header.width, header.t, header.steps,
            header.channels,
        ),
        np.asarray(header.scale + header.shift, dtype="<f2").tobytes(),
        _varint(len(header.side_info)),
        np.asarray(header.side_info, dtype="<f2").tobytes(),
        b"".join(_varint(len(p)) for p in payloads),
        *payloads,
    ]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def parse(data: bytes, max_pixels: int | None = None, max_steps: int | None = None) -> tuple[Header, list[bytes]]:
    """Validate `data` completely and return its header and payloads.

    `max_pixels` bounds the padded area and `max_steps` the denoising steps (None: no limit).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError("Expected the bytes of a bitstream file.")
    data = bytes(data)
    if len(data) > MAX_FILE_BYTES:
        raise BitstreamError(f"File too large for a bitstream ({len(data)} bytes).")
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise BitstreamError("Not a diffusion-codec bitstream (wrong magic bytes): was another file uploaded?")
    if len(data) < _FIXED.size + _CRC.size:
        raise BitstreamError(f"The bitstream is truncated: only {len(data)} bytes.")
    version = data[2]
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise BitstreamError(f"Unsupported bitstream version {version} (this software reads versions {readable}).")
    body, (crc,) = data[:-_CRC.size], _CRC.unpack(data[-_CRC.size:])
    if zlib.crc32(body) != crc:
        raise BitstreamError("The bitstream is corrupt or truncated (checksum mismatch).")

    (_, _, mode_id, backbone_fp, adapter_fp, height, width, t, steps, channels) = _FIXED.unpack_from(body)
    if mode_id >= len(MODES):
        raise BitstreamError(f"Unknown coding mode {mode_id}.")
    mode = MODES[mode_id]
    if not 1 <= channels <= MAX_CHANNELS:
        raise BitstreamError(f"Invalid latent channel count {channels}.")
    gamma, offset = _read_floats(body, _FIXED.size, 2 * channels)
    if version == 1:  # side information had no count: analytic files carried C prior scales
        side_count = channels if mode == "analytic" else 0
    else:
        side_count, offset = _read_varint(body, offset, "side-information count")
        if side_count > MAX_SIDE_VALUES:
            raise BitstreamError(f"Too much side information ({side_count} values; at most {MAX_SIDE_VALUES}).")
    side_info, offset = _read_floats(body, offset, side_count)
    lengths = []
    for _ in range(payload_count(mode)):
        length, offset = _read_varint(body, offset)
        lengths.append(length)
    if offset + sum(lengths) != len(body):
        raise BitstreamError(
            f"Payload lengths ({sum(lengths)} bytes) do not match the file ({len(body) - offset} bytes after the header)."
        )
    payloads = []
    for length in lengths:
        payloads.append(body[offset:offset + length])
        offset += length

    header = Header(
        mode=mode, backbone_fingerprint=backbone_fp, adapter_fingerprint=adapter_fp,
        height=height, width=width, t=t, steps=steps,
        scale=gamma[:channels], shift=gamma[channels:], side_info=side_info, version=version,
    )
    try:
        _validate_header(header, max_pixels, max_steps)
    except ValueError as exc:
        raise BitstreamError(str(exc)) from None
    return header, payloads


def _read_floats(body: bytes, offset: int, count: int) -> tuple[tuple[float, ...], int]:
    """`count` float16 values at `offset` (the length checked before reading), and the next offset."""
    if len(body) < offset + 2 * count:
        raise BitstreamError("The bitstream is truncated inside its header.")
    values = np.frombuffer(body, dtype="<f2", count=count, offset=offset).astype(np.float64)
    return tuple(float(v) for v in values), offset + 2 * count


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(body: bytes, offset: int, what: str = "payload length") -> tuple[int, int]:
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if offset + i >= len(body):
            raise BitstreamError("The bitstream is truncated inside its header.")
        byte = body[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, offset + i + 1
    raise BitstreamError(f"Invalid {what} in the header.")


def describe(data: bytes, max_pixels: int | None = None, max_steps: int | None = None) -> dict:
    """Header fields, size and bpp of a bitstream (validated, without decoding)."""
    header, payloads = parse(data, max_pixels, max_steps)
    fields = header.as_dict()
    fields.update(bytes=len(data), bpp=8 * len(data) / (header.width * header.height),
                  payload_bytes=[len(p) for p in payloads])
    return fields


# -- compressai's rANS strings ------------------------------------------------------------------
# compressai 1.2.8's RansDecoder (cpp_exts/rans/rans_interface.cpp, third_party/ryg_rans/rans64.h)
# keeps a 64-bit state x and reads the string as 32-bit words, in order, without ever checking its
# length: 2 words to start, at most one per symbol (renormalisation is an `if`, not a loop), and for
# each escape (the top symbol of a CDF, "bypass mode") 4-bit reads of at most one word each: one
# count nibble, another for every count nibble equal to 15, then as many raw nibbles as the counts
# add up to. The counts come from the stream, so a forged string (or an empty one) makes the decoder
# read far past its end: garbage from the heap, or a segfault. Hence both rules below.
#
# 1. Lengths: the encoder writes whole words, at least the 2 of its final state, and per symbol at
#    most 52 bits of state (16 for the symbol, 4 for each of at most 9 bypass nibbles: one count and
#    8 raw nibbles of a 32-bit value; in fact at most 7, see adapter._check_codable), one word per 32
#    bits: at most 2 + 1.63 S words for S symbols. A length that is not whole words, or outside
#    2 .. 2 + 2 S words (that bound with a margin: max_rans_payload_bytes), is refused before
#    anything is decoded or allocated.
# 2. Padding: the decoder gets the string followed by R words 0x80000000. Let b be the bit length of
#    x. A refill from the padding raises b by exactly 32 (it happens when x < 2^31, and the word's top
#    bit is set); a symbol lowers b by at most 16 (x' >= freq * (x >> 16), freq >= 1) and a 4-bit
#    read by 4; b stays in 0..64. With G 4-bit reads, the padding words read are at most
#    (64 + 16 S + 4 G) / 32. In one escape, nibbles of 15 come from x (at most 9 before x < 2^31
#    forces a refill) and at most 8 per refilled word; a padding word's low nibble is 0, which ends
#    the count. f nibbles of 15 cost at most f + 1 count reads and 15 f + 14 raw reads, with
#    f <= 9 + 8 r, where r counts the string's own words read during that count (r sums to at most
#    the N words of the string): G <= 159 S + 128 N. So R = 3 + (16 S + 4 G) // 32 words always suffice.
# For a 1536x1536 image (S = 147,456 per payload) R is 12 MB for a typical string, 31 MB at most.
_RANS_WORD = 4
_RANS_PAD_WORD = struct.pack("<I", 0x80000000)
RANS_STATE_BYTES = 2 * _RANS_WORD  # the final state every payload ends with: its size for no symbols


def max_rans_payload_bytes(symbols: int) -> int:
    """The longest string compressai's encoder can write for `symbols` symbols (2 + 2 S words)."""
    return RANS_STATE_BYTES + _RANS_WORD * 2 * symbols


def check_rans_payload(payload: bytes, symbols: int) -> None:
    """Refuse a payload that compressai's encoder cannot have written for `symbols` symbols."""
    longest = max_rans_payload_bytes(symbols)
    if len(payload) % _RANS_WORD or not RANS_STATE_BYTES <= len(payload) <= longest:
        raise BitstreamError(
            f"An entropy-coded payload of {len(payload):,} bytes cannot hold {symbols:,} symbols (it must be a "
            f"multiple of {_RANS_WORD} bytes between {RANS_STATE_BYTES} and {longest:,}): the file is damaged or forged."
        )


def rans_decoder_input(payload: bytes, symbols: int) -> bytes:
    """`payload` checked and padded so that compressai's rANS decoder cannot read past it (see above)."""
    check_rans_payload(payload, symbols)
    reads = 159 * symbols + 128 * (len(payload) // _RANS_WORD)  # G, the 4-bit reads
    words = 3 + (16 * symbols + 4 * reads) // 32
    return bytes(payload) + _padding(words)


_longest_padding = b""  # the longest padding made so far, sliced for shorter ones


def _padding(words: int) -> memoryview:
    """`words` padding words as a view of one cached string: building 2.3 MB of padding for a
    768x512 latent took ~1 ms of every decode (5 % of the demo's codec overhead at 0.4 bpp). The
    cache holds the longest padding asked for, at most 31 MB under the app's pixel limit."""
    global _longest_padding
    padding = _longest_padding  # one read: another thread may replace it meanwhile
    if len(padding) < words * _RANS_WORD:
        padding = _longest_padding = _RANS_PAD_WORD * words
    return memoryview(padding)[: words * _RANS_WORD]


def padded_size(height: int, width: int) -> tuple[int, int]:
    """The size the encoder pads an image to, which the VAE and the UNet process."""
    return -(-height // PAD_MULTIPLE) * PAD_MULTIPLE, -(-width // PAD_MULTIPLE) * PAD_MULTIPLE


def check_pixels(height: int, width: int, max_pixels: int) -> None:
    """Raise ValueError when the padded image exceeds `max_pixels`."""
    padded_h, padded_w = padded_size(height, width)
    if padded_h * padded_w > max_pixels:
        # Exact pixel counts: a rounded "2.4 megapixels; the limit is 2.4" would read as equal.
        raise ValueError(
            f"The image is {width}x{height}, coded as {padded_w}x{padded_h} = {padded_w * padded_h:,} pixels "
            f"(padded to multiples of {PAD_MULTIPLE}); the limit is {max_pixels:,} pixels."
        )


def _validate_header(h: Header, max_pixels: int | None = None, max_steps: int | None = None) -> None:
    if h.mode not in MODES:
        raise ValueError(f"Unknown coding mode {h.mode!r}.")
    if len(h.backbone_fingerprint) != FINGERPRINT_BYTES or len(h.adapter_fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(f"Fingerprints must be {FINGERPRINT_BYTES} bytes.")
    if h.mode == "analytic" and h.adapter_fingerprint != bytes(FINGERPRINT_BYTES):
        raise ValueError("An analytic-mode file must have a zero adapter fingerprint.")
    if not (1 <= h.height <= 65535 and 1 <= h.width <= 65535):
        raise ValueError(f"Invalid image size {h.width}x{h.height}.")
    if max_pixels is not None:
        check_pixels(h.height, h.width, max_pixels)
    if not (1 if h.version == 1 else 0) <= h.t <= MAX_TIMESTEP:  # version 1 cannot say "no denoising"
        raise ValueError(f"Invalid diffusion timestep t={h.t}.")
    if not (h.steps == 0 if h.t == 0 else 1 <= h.steps <= min(h.t, MAX_STEPS_FIELD)):
        raise ValueError(f"Invalid number of denoising steps {h.steps} for t={h.t}.")
    if max_steps is not None and h.steps > max_steps:
        raise ValueError(f"The file asks for {h.steps} denoising steps; this decoder's limit is {max_steps}.")
    if not 1 <= len(h.scale) <= MAX_CHANNELS or len(h.shift) != len(h.scale):
        raise ValueError("Invalid gamma (per-channel scale and shift).")
    if not all(math.isfinite(a) and a > 0 for a in h.scale) or not all(math.isfinite(b) for b in h.shift):
        raise ValueError("Invalid gamma values (scales must be positive and finite).")
    if len(h.side_info) > MAX_SIDE_VALUES or not all(math.isfinite(v) for v in h.side_info):
        raise ValueError("Invalid side information (at most MAX_SIDE_VALUES finite values).")
    if h.version == 1 and not all(v > 0 for v in h.side_info):  # version 1's rule for the analytic prior scales
        raise ValueError("Invalid per-channel prior scales.")
