"""Whole numbers that arrive as text: versions, counts, ``top_k``, header values.

``str.isdigit()`` accepts ``²`` and Arabic-Indic digits, which ``int()`` then refuses
(a 500) or reads; and turning a 5,000-digit string into an int costs quadratic time.
Every number a client, a header or a folder name hands modelport goes through
:func:`natural` or :func:`parse_natural`: ASCII digits only, within a bounded length,
no sign, no spaces.
"""

from __future__ import annotations

from modelport.errors import InvalidInput

MAX_DIGITS = 18  # below 2**63: fits every int64 field of the protocols
_ASCII_DIGITS = frozenset("0123456789")


def natural(text: str, *, max_digits: int = MAX_DIGITS) -> int | None:
    """The value of ``text`` when it is 1 to ``max_digits`` ASCII digits, else None."""
    if not 0 < len(text) <= max_digits or not _ASCII_DIGITS.issuperset(text):
        return None
    return int(text)


def parse_natural(text: str, *, what: str, max_digits: int = MAX_DIGITS) -> int:
    """:func:`natural`, or an InvalidInput naming ``what`` and what is accepted."""
    value = natural(text, max_digits=max_digits)
    if value is None:
        raise InvalidInput(
            f"{what} {shown(text)} is not a whole number (ASCII digits 0-9, at most "
            f"{max_digits} of them)"
        )
    return value


def shown(text: str, *, limit: int = 40) -> str:
    """``text`` quoted for a message: a client's 5,000-digit "number" is cut short."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def declared_over(text: str, limit: int) -> bool:
    """Whether a declared length (``Content-Length``) is over ``limit``; one with more
    digits than any int64 is. Text that is no number is left to the server's parser."""
    if text and _ASCII_DIGITS.issuperset(text) and len(text) > MAX_DIGITS:
        return True
    return (natural(text) or 0) > limit


def parse_seconds(text: str, *, what: str) -> float:
    """Seconds as ``12`` or ``0.25`` (ASCII digits, one optional point, bounded), or an
    InvalidInput naming ``what``."""
    whole, _, fraction = text.strip().partition(".")
    if natural(whole or "0", max_digits=9) is None or (
        fraction and natural(fraction, max_digits=9) is None
    ):
        raise InvalidInput(f"{what} {shown(text)} is not a number of seconds (such as 5 or 0.25)")
    return float(f"{whole or '0'}.{fraction or '0'}")
