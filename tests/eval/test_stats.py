import math

import pytest

from eval.stats import wilson_interval, z_value


def test_z_value_95():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [
        # Newcombe (1998), Stat. Med. 17:857, Table I, method 3 (Wilson score, no continuity correction),
        # and the symmetric 5/10 case.
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=1e-4)
    assert got[1] == pytest.approx(hi, abs=1e-4)


def test_wilson_edges_and_errors():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(3, 7)
    assert lo < 3 / 7 < hi
    # Narrower with more data at the same rate.
    lo2, hi2 = wilson_interval(30, 70)
    assert hi2 - lo2 < hi - lo
    # 99 % is wider than 95 %.
    lo3, hi3 = wilson_interval(3, 7, confidence=0.99)
    assert lo3 < lo and hi3 > hi
    assert not math.isnan(lo)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=1.5)
