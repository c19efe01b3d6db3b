"""Property-based tests for reward.py: any string is safe, and equivalence behaves like one."""
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reward

TIME_BOUND = 1.0
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
FEW = settings(FUZZ, max_examples=40)


@pytest.fixture(scope="module", autouse=True)
def warm_worker():
    assert reward.is_equivalent("2\\sqrt{2}", "\\sqrt{8}")  # one-off worker start, not timed


def check_safe(text: str):
    """Every public function returns the right type within the time bound."""
    for gold in ("5", "\\frac{1}{2}", "(x+1)^2"):
        for fn, args, types in ((reward.is_equivalent, (text, gold), (bool,)),
                                (reward.is_equivalent, (gold, text), (bool,)),
                                (reward.reward, (text, gold), (float,))):
            start = time.monotonic()
            result = fn(*args)
            assert time.monotonic() - start < TIME_BOUND, (fn.__name__, text[:60])
            assert isinstance(result, types)
    answer = reward.extract_answer(text)
    assert answer is None or isinstance(answer, str)


MATH_TOKENS = ["\\frac", "\\dfrac", "\\sqrt", "\\boxed", "\\fbox", "\\left(", "\\right)", "\\{",
               "\\}", "\\pi", "\\infty", "\\text{", "\\cdot", "\\cup", "\\sin", "{", "}", "(",
               ")", "[", "]", "^", "**", "_", "!", "!!", ",", ".", "/", "-", "+", "=", "%", "$",
               "####", "Answer:", " ", "\n", "x", "i", "e", "0", "1", "2", "3", "9", "99999",
               "10", "\\\\", "&"]
math_soup = st.lists(st.sampled_from(MATH_TOKENS), max_size=40).map("".join)


@FUZZ
@given(st.text(max_size=300))
def test_random_text_is_safe(text):
    check_safe(text)


@FUZZ
@given(math_soup)
def test_math_token_soup_is_safe(text):
    check_safe(text)


@FEW
@given(st.sampled_from(["9", "10", "99", "2", "x"]), st.integers(2, 6))
def test_power_towers_are_safe(base, height):
    check_safe("^".join([base] * height))
    check_safe("{" + "^{".join([base] * height) + "}" * height)
    check_safe("**".join([base] * height))


# --- well-formed answers -----------------------------------------------------------------------

small = st.integers(-12, 12)
nonzero = st.integers(1, 12)
integers = st.integers(-10**6, 10**6).map(str)
fractions = st.builds(lambda p, q, form: form.format(p=p, q=q), small, nonzero,
                      st.sampled_from(["{p}/{q}", "\\frac{{{p}}}{{{q}}}", "\\dfrac{{{p}}}{{{q}}}"]))
decimals = st.decimals(-1000, 1000, places=3, allow_nan=False, allow_infinity=False).map(str)
scalars = st.one_of(integers, fractions, decimals)
tuples = st.lists(scalars, min_size=2, max_size=4).map(lambda xs: "(" + ", ".join(xs) + ")")
well_formed = st.one_of(scalars, tuples)


@FUZZ
@given(well_formed)
def test_reflexive(answer):
    assert reward.is_equivalent(answer, answer)
    assert reward.is_equivalent(f" ${answer}$ ", answer)
    assert reward.reward(f"so \\boxed{{{answer}}}.", answer) == 1.0


@FUZZ
@given(well_formed, well_formed)
def test_symmetric(a, b):
    assert reward.is_equivalent(a, b) == reward.is_equivalent(b, a)


@FUZZ
@given(small, nonzero, small, nonzero)
def test_fractions_agree_with_exact_arithmetic(p, q, r, s):
    expected = Fraction(p, q) == Fraction(r, s)
    assert reward.is_equivalent(f"\\frac{{{p}}}{{{q}}}", f"{r}/{s}") is expected
    assert reward.is_equivalent(f"\\dfrac{{{p}}}{{{q}}}", f"\\frac{{{r}}}{{{s}}}") is expected


@FUZZ
@given(st.integers(-10**9, 10**9))
def test_thousands_separators(n):
    assert reward.is_equivalent(f"{n:,}", str(n))
    assert not reward.is_equivalent(f"{n:,}", str(n + 1))
    assert not reward.is_equivalent(str(n), str(10 * n + 1))  # `3` is not `31`


@FUZZ
@given(st.integers(0, 10**6), st.integers(1, 6))
def test_decimals_compare_exactly_when_written_out(n, places):
    value = Fraction(n, 10**places)
    text = f"{n / 10**places:.{places}f}"
    assert reward.is_equivalent(text, f"\\frac{{{value.numerator}}}{{{value.denominator}}}")
    assert reward.is_equivalent(text, f"{n}/{10**places}")
    shifted = f"{n / 10**places + 10**-places:.{places}f}"  # one unit in the last place
    assert reward.is_equivalent(text, shifted) is (abs(Fraction(shifted) - value)
                                                   <= Fraction(1, 10**6) * Fraction(shifted))


@FEW
@given(st.integers(1, 9), st.integers(2, 9), st.sampled_from([2, 3, 5, 6, 7]))
def test_square_roots_simplify(a, b, c):
    """a*b*sqrt(c) == a*sqrt(b^2 c), through sympy; and off by one is not equal."""
    assert reward.is_equivalent(f"{a * b}\\sqrt{{{c}}}", f"{a}\\sqrt{{{b * b * c}}}")
    assert not reward.is_equivalent(f"{a * b + 1}\\sqrt{{{c}}}", f"{a}\\sqrt{{{b * b * c}}}")
