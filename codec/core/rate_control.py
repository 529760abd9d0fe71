"""Rate control: the largest rate whose real file is not above a target size.

`search` knows nothing of adapters: it probes a knob (lambda, or a quantization step) through the
callables it is given and checks candidates with the real coder.
"""

from __future__ import annotations

import math

ITERATIONS = 24


def search(candidate, pack, knob_range: tuple[float, float], target_bits: float, header_bits: float):
    """`candidate(knob)` -> an object with `.knob` and `.estimated_bits`; `pack(candidate)` -> file bytes.
    `knob_range` is (log knob of the lowest rate, log knob of the highest rate); `header_bits` is the
    container's size without payloads. Returns (candidate, file bytes).

    The search runs on the entropy model's estimate plus the header size (cheap, no coding), with
    false position on log(bits), which is nearly linear in log(knob), alternating with bisection.
    Each result is checked with the real coder; the ratio of real to estimated bits then
    recalibrates the budget for another round, keeping the best real file that fits. If even the
    lowest rate overshoots, that file is returned (its bpp says so).
    """

    def bits(candidate):
        return candidate.estimated_bits + header_bits

    lowest = candidate(math.exp(knob_range[0]))
    highest = candidate(math.exp(knob_range[1]))
    best, best_data = None, None
    budget = target_bits
    for _ in range(3):  # calibration rounds
        lo, hi = lowest, highest
        if bits(hi) <= budget:
            lo = hi
        for iteration in range(ITERATIONS):
            if bits(lo) > budget or bits(lo) >= 0.995 * budget or bits(hi) - bits(lo) < 1e-3 * budget:
                break
            f_lo, f_hi = math.log(bits(lo) / budget), math.log(bits(hi) / budget)
            k_lo, k_hi = math.log(lo.knob), math.log(hi.knob)
            frac = min(max(f_lo / (f_lo - f_hi), 0.05), 0.95) if iteration % 2 == 0 else 0.5
            mid = candidate(math.exp(k_lo + frac * (k_hi - k_lo)))
            lo, hi = (mid, hi) if bits(mid) <= budget else (lo, mid)
        data = pack(lo)
        real_bits = 8 * len(data)
        if best is None or (real_bits <= target_bits and (len(best_data) * 8 > target_bits or len(data) > len(best_data))):
            best, best_data = lo, data
        if (lo is highest and real_bits <= target_bits) or (lo is lowest and real_bits > target_bits):
            break
        if 0.97 * target_bits <= real_bits <= target_bits:
            break
        budget = 0.998 * target_bits * bits(lo) / real_bits
    return best, best_data
