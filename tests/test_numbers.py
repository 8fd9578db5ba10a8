"""One parser for whole numbers that arrive as text (modelport.numbers)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelport.errors import InvalidInput
from modelport.numbers import MAX_DIGITS, natural, parse_natural


@pytest.mark.parametrize("text", ["0", "7", "0042", "9" * MAX_DIGITS])
def test_ascii_digits_are_numbers(text: str) -> None:
    assert natural(text) == int(text)


@pytest.mark.parametrize(
    "text",
    # superscripts, Arabic-Indic and full-width digits pass str.isdigit(), not this
    [
        "",
        " 1",
        "1 ",
        "+1",
        "-1",
        "1.0",
        "1e3",
        "\u00b2",
        "\u00b3",
        "\u0661\u0662",
        "\uff11",
        "9" * (MAX_DIGITS + 1),
        "1_000",
    ],
)
def test_anything_else_is_not(text: str) -> None:
    assert natural(text) is None
    with pytest.raises(InvalidInput, match=r"version .* is not a whole number"):
        parse_natural(text, what="version")


def test_a_long_number_is_shown_cut_short() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_natural("1" * 5000, what="top_k")
    assert len(caught.value.message) < 200


@given(st.text(max_size=40))
def test_natural_never_raises_and_agrees_with_ascii_digits(text: str) -> None:
    value = natural(text)
    plain = 0 < len(text) <= MAX_DIGITS and all("0" <= c <= "9" for c in text)
    assert (value is not None) == plain
    if value is not None:
        assert value == int(text)
