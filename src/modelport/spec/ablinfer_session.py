"""An ABLInfer session's choices checked against its spec, and what they become.

``plan_session`` checks a ``POST /models/{id}`` body in upstream's order and words;
``container_args`` turns the choices into the container's arguments exactly as the
client library builds them (positional ``""`` flags, ``=``-suffixed flags, bools as bare
flags, values as Python's ``str`` prints them); ``sniff_filetype`` and its neighbours
tell an uploaded volume's type.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelport.errors import InvalidInput
from modelport.spec.ablinfer import AblinferSpec, Document

VOLUME_TYPES = (".nii", ".nii.gz", ".nrrd")
SNIFF_BYTES = 384  # a NIfTI-1 header is 348 bytes, its magic at 344


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """What a ``POST /models/{id}`` asked for, checked against the spec."""

    params: dict[str, Any]  # name -> the value handed to the container
    enabled: dict[str, bool]  # every input and output name -> enabled

    def needed(self, spec: AblinferSpec) -> list[str]:
        """The enabled inputs, in the spec's order: what must be uploaded before a run."""
        return [name for name in spec.io("inputs") if self.enabled.get(name)]

    def to_json(self) -> Document:
        return {"params": self.params, "enabled": self.enabled}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionPlan:
        return cls(dict(data["params"]), dict(data["enabled"]))


def plan_session(spec: AblinferSpec, body: Any) -> SessionPlan:
    """Check a ``POST /models/{id}`` body against the spec, in upstream's order and words
    (each problem an InvalidInput, where upstream sometimes answered 200 with errors)."""
    if not isinstance(body, dict):
        raise InvalidInput("Must pass the model parameters as JSON")
    if "params" not in body:
        raise InvalidInput("Missing section params")
    given = body["params"]
    if not isinstance(given, dict):
        raise InvalidInput("Improper formatting for params")
    params = {}
    for name, entry in spec.params.items():
        if name not in given:
            params[name] = entry["default"]
            continue
        value = given[name]
        if not isinstance(value, dict):
            raise InvalidInput(f"Improper formatting for params/{name}")
        if "value" not in value:
            raise InvalidInput(f"Invalid value for params/{name}: no 'value'")
        params[name] = _param_value(name, entry, value["value"])
    enabled = {}
    for section, word in (("inputs", "Input"), ("outputs", "Output")):
        asked = body.get(section) or {}
        if not isinstance(asked, dict):
            raise InvalidInput(f"Improper formatting for {section}")
        entries = spec.io(section)
        for name in asked:
            if name not in entries:
                raise InvalidInput(f"Unknown {word.lower()} {name}")
        for name, entry in entries.items():
            choice = asked.get(name, {})
            on = choice.get("enabled") if isinstance(choice, dict) else None
            if on is None:
                on = entry["status"] in ("required", "suggested")
            if not on and entry["status"] == "required":
                raise InvalidInput(f"{word} {name} cannot be disabled")
            enabled[name] = bool(on)
    return SessionPlan(params, enabled)


def _param_value(name: str, entry: Document, value: Any) -> Any:
    kind = entry["type"]
    problem = ""
    if kind in ("int", "float"):
        try:
            number = _number(value, kind)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"Invalid value for params/{name}: {exc}") from None
        if not entry["min"] <= number <= entry["max"]:
            problem = f"{number} is not between {entry['min']} and {entry['max']}"
        value = number
    elif kind == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            value = value.lower() in ("true", "1")
        elif not isinstance(value, bool | int):
            problem = f"{value!r} is not true or false"
        value = bool(value)
    elif kind == "string":
        if not isinstance(value, str | int | float):
            problem = f"{value!r} is not a string"
        value = str(value)
    elif kind == "enum":
        choices: dict[str, Any] = entry["enum"]
        # The client sends a value, upstream's server looked up a key: take either.
        if isinstance(value, str) and value in choices:
            value = choices[value]
        elif value not in choices.values():
            problem = f"{value!r} is not one of {sorted(map(str, choices.values()))}"
    if problem:
        raise InvalidInput(f"Invalid value for params/{name}: {problem}")
    return value


def _number(value: Any, kind: str) -> int | float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not a whole number")
        if isinstance(value, str) and not re.fullmatch(r"[+-]?[0-9]{1,20}", value.strip()):
            raise ValueError(f"{value!r} is not a whole number")
        return int(value)
    if isinstance(value, str) and len(value) > 64:
        raise ValueError("too long for a number")
    return float(value)


def container_args(spec: AblinferSpec, plan: SessionPlan) -> list[str]:
    """The container's arguments (appended to the image's ENTRYPOINT), as the client
    library builds them: enabled inputs and outputs as their paths under ``data_path``,
    bools as bare flags when true, every other param as ``str(value)``; in ``order``, or
    in sorted name order when the spec has none (an empty ``order`` gives none at all)."""
    pieces: dict[str, tuple[str, ...]] = {}
    for section in ("inputs", "outputs"):
        for name, entry in spec.io(section).items():
            if plan.enabled.get(name):
                pieces[name] = _flagged(entry["flag"], spec.container_path(name))
    for name, entry in spec.params.items():
        value = plan.params[name]
        if entry["type"] == "bool":
            if value:
                pieces[name] = (entry["flag"],)
        else:
            pieces[name] = _flagged(entry["flag"], str(value))
    order = spec.document["order"] if "order" in spec.document else sorted(pieces)
    return [piece for name in order for piece in pieces.get(name, ())]


def _flagged(flag: str, value: str) -> tuple[str, ...]:
    if not flag:
        return (value,)
    if flag.endswith("="):
        return (flag + value,)
    return (flag, value)


# -- file types ------------------------------------------------------------------------------


def sniff_filetype(header: bytes) -> str | None:
    """``.nii``, ``.nrrd``, ``.nii.gz``, ``.nrrd.gz`` (or ``.gz``) from a file's first
    bytes, or None when they are none of those."""
    if header[:2] == b"\x1f\x8b":
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(header, SNIFF_BYTES)
        except zlib.error:
            return ".gz"
        found = _sniff_plain(inner)
        return f"{found}.gz" if found else None
    return _sniff_plain(header)


def _sniff_plain(header: bytes) -> str | None:
    if header.startswith(b"NRRD"):
        return ".nrrd"
    if len(header) >= SNIFF_BYTES and header[:2] == b"\x5c\x01" and header[344:348] == b"n+1\0":
        return ".nii"
    return None


def filetype_check(extension: str, filetype: str | None, can_convert: bool) -> bool:
    """Whether an upload of ``filetype`` is acceptable for an input of ``extension``."""
    if extension.lower() not in VOLUME_TYPES:
        return True
    return (filetype or "").lower() == extension.lower() or can_convert


def convertible(extension: str, filetype: str | None) -> bool:
    """Whether SimpleITK could turn ``filetype`` into ``extension`` (both volume types)."""
    if filetype is None or filetype.lower() == extension.lower():
        return False
    return filetype.lower() in VOLUME_TYPES and extension.lower() in VOLUME_TYPES
