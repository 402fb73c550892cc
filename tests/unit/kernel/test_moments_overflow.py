"""Variance beyond the double range: IEEE overflow to inf; stddev is the exact root, rounded."""

from __future__ import annotations

import math
import random
from decimal import Decimal, localcontext
from fractions import Fraction

import pytest

from tests.reference.functions import _sqrt_ratio, make_aggregator


def finalize(function: str, values: list[float]) -> float | None:
    agg = make_aggregator(function, "float")
    state = agg.init()
    for i, v in enumerate(values):
        state = agg.add(state, v, (i, 0, i))
    result: float | None = agg.finalize(state)
    return result


def correctly_rounded_sqrt(x: Fraction) -> float:
    with localcontext() as ctx:
        ctx.prec = 80
        return float((Decimal(x.numerator) / Decimal(x.denominator)).sqrt())


def test_variance_overflows_to_inf_and_stddev_is_the_exact_root() -> None:
    assert finalize("variance", [1e300, 0.0]) == math.inf
    root = finalize("stddev", [1e300, 0.0])
    assert root == correctly_rounded_sqrt(Fraction(10**600, 2)) == 7.071067811865476e299


def test_a_root_beyond_the_double_range_is_inf() -> None:
    assert finalize("variance", [1.7e308, -1.7e308]) == math.inf
    assert finalize("stddev", [1.7e308, -1.7e308]) == math.inf


def test_finite_variances_keep_their_values() -> None:
    values = [1e154, -3.0, 2.5e153, 7.0]
    variance = finalize("variance", values)
    assert variance is not None and math.isfinite(variance)
    assert finalize("stddev", values) == math.sqrt(variance)
    assert finalize("variance", [1.0, 2.0, 3.0, 4.0]) == float(Fraction(5, 3))


@pytest.mark.parametrize("seed", range(5))
def test_sqrt_ratio_is_correctly_rounded(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        a = rng.getrandbits(rng.randrange(1, 2200))
        b = rng.getrandbits(rng.randrange(1, 300)) | 1
        want = correctly_rounded_sqrt(Fraction(a, b))
        assert _sqrt_ratio(a, b) == want, (a, b)
    # an exact square and an irrational root
    assert _sqrt_ratio(9 << 2000, 1) == 3.0 * 2.0**1000
    assert _sqrt_ratio(2, 1) == math.sqrt(2.0)
