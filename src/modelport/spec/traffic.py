"""How a model's requests are shared out: ``traffic`` (a weighted split between its
versions, or other served models such as a ``runtime: remote`` one) and ``shadow``
(copies of a share of them, answered by another version, compared and counted, never
returned)::

    version_policy: {all: true}     # both versions serve
    traffic: {1: 90, 2: 10}         # 90 % of the requests to version 1, 10 % to 2
    shadow: {target: 3, share: 5}   # and a copy of 5 % of them to version 3

Both apply to requests that name no version; a request that names one gets it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from modelport.spec.base import Strict as _Strict


def traffic_target(value: Any) -> str:
    """A target as written (a version number, or a served model's name), checked."""
    text = str(value).strip()
    if not text or "/" in text or (text.isdigit() and int(text) < 1):
        raise ValueError(
            f"a target is a version number (1 or more) or a served model's name, got {value!r}"
        )
    return text


class ShadowSpec(_Strict):
    """A share of a model's requests copied to ``target`` (a version, or another served
    model); its answers are compared with the ones returned (equal within
    ``tolerance``, an absolute difference) and counted, never returned."""

    target: str
    share: float = Field(default=100.0, gt=0, le=100, description="percent of requests")
    tolerance: float = Field(default=0.0, ge=0)

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: Any) -> str:
        return traffic_target(value)


def checked_traffic(value: Any) -> Any:
    """``traffic``'s targets as text (YAML reads ``1:`` as a number) and its weights
    checked; anything but a mapping is left for pydantic to refuse."""
    if not isinstance(value, dict):
        return value
    weights = {traffic_target(k): w for k, w in value.items()}
    if len(weights) != len(value):
        raise ValueError("a target is named twice")
    numbers = [w for w in weights.values() if isinstance(w, int) and not isinstance(w, bool)]
    if len(numbers) != len(weights) or any(w < 0 for w in numbers):
        raise ValueError("weights are whole numbers, 0 or more")
    if weights and not any(numbers):
        raise ValueError("at least one weight must be above 0")
    return weights
