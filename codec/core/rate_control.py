"""Rate control: the largest rate whose real file is not above a target size.

`search` knows nothing of adapters: it probes a knob (lambda, or a quantization step) through the
callables it is given and checks candidates with the real coder.
"""

from __future__ import annotations

import math

TOLERANCE = 0.03  # a real file in [(1 - TOLERANCE) * target, target] ends the search
RESOLUTION = 1e-3  # knob positions closer than this (a fraction of the log-knob range) count as one
MAX_PROBES = 30  # the most candidates one search evaluates (plus at most one fallback)
DEFAULT_SLOPE = 5.0  # d log(bits) per unit of position when the caller gives no slope: a typical range spans e^5
MAX_STEP = 0.5  # the longest extrapolation, as a fraction of the range
SAFEGUARD = 0.1  # false position stays this fraction of the bracket away from its ends


def search(candidate, pack, knob_range: tuple[float, float], target_bits: float, header_bits: float, *,
           start: float | None = None, slope: float | None = None):
    """`candidate(knob)` -> an object with `.knob` and `.estimated_bits`; `pack(candidate)` -> file bytes.
    `knob_range` is (log knob of the lowest rate, log knob of the highest rate); `header_bits` is the
    container's size without payloads. `start` is a first guess of the (positive) knob (default:
    the middle of the range in log knob) and `slope` a guess of d log(bits) / d log(knob), its sign
    ignored (default: DEFAULT_SLOPE over the range). Returns (candidate, file bytes).

    Positions s in [0, 1] run from the lowest to the highest rate (log knob = lo + s (hi - lo)). The
    log of the estimate plus the header is nearly linear in s, so from the start a step along the
    slope, then secant or inverse quadratic steps (bisecting when a step does not halve the miss:
    plateaus), find where the estimate meets the aim in a few probes; the ends of the range are
    probed only when the aim lies beyond a plateau or the range. That candidate is then coded for
    real: a file that fits becomes the lower end of the bracket, one that does not the upper end,
    and the ratio of real to estimated bits corrects the next aim (the estimate misses the coder by
    a few percent, differently at each knob). The search ends when a real file lies in
    [(1 - TOLERANCE) target, target]; or when the best fitting file and a file that overshoots are
    less than RESOLUTION apart (the rate jumps across the target there: a coarser knob's smaller
    file is then the answer); or at the highest rate; or, as a bound, after MAX_PROBES probes. So,
    where the real size rises with the knob, the file returned is never above the target, and it is
    at least (1 - TOLERANCE) of it, or the highest rate, or one RESOLUTION more knob overshoots. If
    even the lowest rate overshoots, that file is returned (its bpp says so).
    """
    k_lo, k_hi = knob_range
    span = k_hi - k_lo
    start_s = 0.5 if start is None else min(max((math.log(start) - k_lo) / span, 0.0), 1.0)
    default_slope = DEFAULT_SLOPE if slope is None else abs(slope * span)
    probed = {}  # s -> (candidate, log(estimated bits + header))
    packed = {}  # s -> (file bytes, real bits)

    def probe(s: float):
        if s not in probed:
            c = candidate(math.exp(k_lo + s * span))
            probed[s] = (c, math.log(max(c.estimated_bits + header_bits, 1.0)))
        return probed[s]

    def local_slope(s: float) -> float | None:
        """The secant slope through the two probes nearest to s; the default slope while there is one
        probe; None on a plateau or where noise makes it unusable."""
        near = sorted(probed, key=lambda p: abs(p - s))[:2]
        if len(near) < 2:
            return default_slope
        fitted = (probed[near[1]][1] - probed[near[0]][1]) / (near[1] - near[0])
        return fitted if fitted > default_slope / 20 else None

    def next_position(aim: float, low: float, high: float) -> float | None:
        """A position in [low, high], not coded yet, whose estimate meets the aim; probes as it goes.
        None when the probe budget leaves nothing new to code."""
        slow, last_miss = False, math.inf  # a bracketed step that did not halve the last miss: bisect next
        while True:
            inside = [s for s in probed if low <= s <= high]  # in probing order
            offsets = {s: probed[s][1] - aim for s in inside}
            fresh = [s for s in inside if s not in packed]
            window = [s for s in fresh if abs(offsets[s]) <= TOLERANCE / 2]
            if window:
                return min(window, key=lambda s: abs(offsets[s]))
            if len(probed) >= MAX_PROBES:
                below = [s for s in fresh if offsets[s] <= 0]
                return max(below) if below else None
            a = max((s for s in inside if offsets[s] <= 0), default=None)
            b = min((s for s in inside if offsets[s] > 0 and (a is None or s > a)), default=None)
            if a is not None and b is not None and b - a >= RESOLUTION:
                x = _bracketed_step(a, b, [(s, offsets[s]) for s in inside[-3:]], offsets, slow)
                miss = abs(probe(x)[1] - aim)
                slow, last_miss = miss > last_miss / 2, miss
                continue
            if a is not None and b is None and high - a >= RESOLUTION:  # all below the aim: go up
                slope = local_slope(a)  # on a plateau, try the end of the bracket instead
                x = a + min(-offsets[a] / slope, MAX_STEP) if slope else high
            elif b is not None and a is None and b - low >= RESOLUTION:  # all above the aim: go down
                slope = local_slope(b)
                x = b - min(offsets[b] / slope, MAX_STEP) if slope else low
            elif a is None and b is None:
                x = start_s
            elif a is not None and b is None and high not in probed:
                x = high
            elif b is not None and a is None and low not in probed:
                x = low
            else:  # the estimate crosses the aim within RESOLUTION, or stays on one side up to an end
                ends = [s for s in (a, b) if s is not None and s not in packed]
                if ends:
                    return ends[0]
                x = (low + high) / 2  # the estimate disagrees with the coded files there: bisect those
            x = min(max(x, low), high)
            if x in probed:
                x = (low + high) / 2
                if x in probed:
                    return x if x not in packed else None
            probe(x)

    best = None  # position of the largest real file that fits
    ratio = 1.0  # real / estimated bits of the last coded candidate
    for _ in range(2 * MAX_PROBES):  # each round codes a position not coded before
        if best is not None and packed[best][1] >= (1 - TOLERANCE) * target_bits:
            break
        low = 0.0 if best is None else best
        overshooting = [s for s, (_, bits) in packed.items() if bits > target_bits and s > low]
        high = min(overshooting) if overshooting else 1.0
        if best is None and 0.0 in packed:  # even the lowest rate overshoots
            return probed[0.0][0], packed[0.0][0]
        if best is not None and (best == 1.0 or high - best < RESOLUTION):
            break
        if len(probed) >= MAX_PROBES and best is not None:
            break
        s = next_position(math.log((1 - TOLERANCE / 2) * target_bits / ratio), low, high)
        if s is None:  # the probe budget is spent
            if best is not None:
                break
            s = 0.0
        data = pack(probe(s)[0])
        real_bits = 8 * len(data)
        packed[s] = (data, real_bits)
        ratio = real_bits / math.exp(probed[s][1])
        if real_bits <= target_bits and (best is None or (real_bits, s) > (packed[best][1], best)):
            best = s
    if best is None:  # the rounds ran out before any file fitted: the lowest rate is all that is left
        chosen = probe(0.0)[0]
        return chosen, packed[0.0][0] if 0.0 in packed else pack(chosen)
    return probed[best][0], packed[best][0]


def _bracketed_step(a: float, b: float, recent, offsets: dict, bisect: bool) -> float:
    """The next position inside the bracket (a below the aim, b above): the middle after a step that
    did not halve the miss (`bisect`); else inverse quadratic interpolation through the last three
    probes (log bits is curved in log knob at low rates) or the secant through the last two, where
    it lands inside the bracket; else false position kept SAFEGUARD away from the ends."""
    if bisect:
        return (a + b) / 2
    for points in (recent[-3:], recent[-2:]):
        x = _interpolate(points)
        if x is not None and a + RESOLUTION / 2 <= x <= b - RESOLUTION / 2:
            return x
    fraction = offsets[a] / (offsets[a] - offsets[b])
    return a + min(max(fraction, SAFEGUARD), 1 - SAFEGUARD) * (b - a)


def _interpolate(points) -> float | None:
    """Where the polynomial in the offsets through (position, offset) points (Lagrange, inverse
    interpolation) gives offset 0; None unless there are 2 or 3 points with distinct offsets."""
    offsets = [f for _, f in points]
    if len(points) < 2 or len(set(offsets)) < len(offsets):
        return None
    x = 0.0
    for i, (s_i, f_i) in enumerate(points):
        weight = 1.0
        for j, (_, f_j) in enumerate(points):
            if j != i:
                weight *= f_j / (f_j - f_i)
        x += s_i * weight
    return x
