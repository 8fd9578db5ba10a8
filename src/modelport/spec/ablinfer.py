"""ABLInfer model specs (the JSON files of ABLInfer's InferServer), read as they are.

A spec is updated to json_version 1.3 (from 1.0-1.2, or from the older DeepInfer form)
and normalized the way the ``ablinfer`` client normalizes it, so the document served at
``GET /models/{id}`` passes the client's own ``normalize_model``. A file that cannot be
used raises :class:`~modelport.errors.SpecError` naming the file and the field (the
upstream server crashed at start instead). What a session asks of a spec, and the
arguments it becomes, is ``ablinfer_session.py``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.errors import SpecError

VERSION = (1, 3)
IO_TYPES = ("volume", "segmentation")
PARAM_TYPES = ("int", "float", "bool", "enum", "string")
STATUSES = ("required", "suggested", "optional")
INT_RANGE = (-2147483648, 2147483647)
FLOAT_RANGE = (-3.40282e38, 3.40282e38)
DEEPINFER_DATA_PATH = "/home/deepinfer/data"
_DEEPINFER_INTS = {
    "uint8_t": (0, 255),
    "int8_t": (-128, 127),
    "uint16_t": (0, 65535),
    "int16_t": (-32678, 32767),  # sic: DeepInfer's own table, kept as the client has it
    "uint32_t": (0, 2147483647),
    "uint64_t": (0, 2147483647),
    "unsigned int": (0, 2147483647),
    "int32_t": INT_RANGE,
    "int64_t": INT_RANGE,
    "int": INT_RANGE,
}
_CAMEL = re.compile(r"((?<=[a-z0-9])[A-Z]|(?!^)[A-Z](?=[a-z]))")

Document = dict[str, Any]


@dataclass(frozen=True, slots=True)
class AblinferSpec:
    """A loaded spec: the normalized document (served as is) and the file it came from."""

    document: Document
    source: str

    @property
    def id(self) -> str:
        return str(self.document["id"])

    @property
    def version(self) -> str:
        return str(self.document["version"])

    @property
    def image(self) -> str:
        docker = self.document["docker"]
        return f"{docker['image_name']}:{docker['image_tag']}"

    @property
    def data_path(self) -> str:
        path = str(self.document["docker"]["data_path"])
        return path[:-1] if len(path) > 1 and path[-1] in "/\\" else path

    def io(self, section: str) -> dict[str, Document]:
        """``inputs`` or ``outputs``: name -> its entry."""
        return dict(self.document[section])

    @property
    def params(self) -> dict[str, Document]:
        return dict(self.document["params"])

    def file_name(self, name: str) -> str:
        """The file an input or output is kept as: ``<name><extension>``."""
        entry = self.document["inputs"].get(name) or self.document["outputs"][name]
        return f"{name}{entry['extension']}"

    def container_path(self, name: str) -> str:
        return f"{self.data_path}/{self.file_name(name)}"


# -- loading ---------------------------------------------------------------------------------


def load_spec(path: Path) -> AblinferSpec:
    """Read, update and normalize one spec file; SpecError names the file and the field."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecError(f"{path.name}: not a readable JSON file: {exc}") from None
    return parse_spec(raw, path.name)


def parse_spec(raw: Any, source: str) -> AblinferSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a model spec is a JSON object")
    try:
        document = normalize(update(copy.deepcopy(raw)))
    except _FieldError as exc:
        raise SpecError(f"{source}: {exc.field}: {exc.problem}") from None
    return AblinferSpec(document, source)


class _FieldError(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


def update(doc: Document) -> Document:
    """Bring a spec to json_version 1.3, one step at a time, as the client does."""
    if "json_version" not in doc:
        doc = _from_deepinfer(doc)
    version = doc["json_version"]
    match = re.fullmatch(r"(\d+)\.(\d+)", str(version))
    if match is None:
        raise _FieldError("json_version", f"{version!r} is not 'major.minor'")
    current = (int(match[1]), int(match[2]))
    if current > VERSION:
        raise _FieldError("json_version", f"{version} is newer than 1.3, the newest known")
    if current < (1, 0):
        raise _FieldError("json_version", f"{version} is older than 1.0")
    if current < (1, 1):
        doc.setdefault("website", "")
        doc.pop("brief_description", None)
    if current < (1, 2) and "id" not in doc:
        name = _text(doc, "name")
        ident = name.lower().replace(" ", "_").replace("-", "_")
        if not ident.isidentifier():
            # Not for security: the id the client derives from the name, derived the same way.
            ident = "model_" + hashlib.md5(name.encode()).hexdigest()
        doc["id"] = ident
    if current < (1, 3):
        for section in ("inputs", "outputs"):
            for entry in _mapping(doc, section).values():
                if isinstance(entry, dict):
                    entry.setdefault("status", "required")
    doc["json_version"] = "1.3"
    return doc


def _from_deepinfer(old: Document) -> Document:
    """DeepInfer's format (``members`` with ``iotype``) as json_version 1.0."""
    docker = old.get("docker")
    if not isinstance(docker, dict) or "members" not in old:
        raise _FieldError("json_version", "missing (and the file is not a DeepInfer model)")
    doc: Document = {
        "json_version": "1.0",
        "type": "docker",
        "name": _text(old, "name"),
        **{key: old.get(key, "") for key in ("organ", "task", "status", "modality", "version")},
        "description": old.get("detaileddescription", old.get("briefdescription", "")),
        "maintainers": old.get("maintainers", []),
        "citation": old.get("citation", ""),
        "docker": {
            "image_name": docker.get("dockerhub_repository"),
            "image_tag": docker.get("digest"),
            "data_path": old.get("data_path", DEEPINFER_DATA_PATH),
        },
        "inputs": {},
        "params": {},
        "outputs": {},
    }
    for index, member in enumerate(old["members"]):
        where = f"members/{index}"
        if not isinstance(member, dict):
            raise _FieldError(where, "expected an object")
        name, iotype, kind = member.get("name"), member.get("iotype"), member.get("type")
        pretty = _CAMEL.sub(r" \1", str(name))
        described = {"name": pretty, "description": member.get("detaileddescriptionSet", "")}
        if kind in ("bool", "int") and iotype != "parameter":
            iotype = "parameter"
        if iotype in ("input", "output") and kind == "volume":
            doc[f"{iotype}s"][name] = {
                **described,
                "flag": f"--{name}",
                "extension": ".nrrd",
                "type": "volume",
                "labelmap": member.get("voltype") == "LabelMap",
            }
        elif iotype == "parameter":
            doc["params"][name] = {**described, "flag": f"--{name}", **_deepinfer_param(member)}
        else:
            raise _FieldError(where, f"unknown {iotype} type {kind!r}")
    return doc


def _deepinfer_param(member: Document) -> Document:
    kind = member.get("type")
    if kind in _DEEPINFER_INTS:
        low, high = _DEEPINFER_INTS[str(kind)]
        return {"type": "int", "default": member.get("default", 0), "min": low, "max": high}
    if kind == "bool":
        return {"type": "bool", "default": member.get("default", "false") == "false"}
    if kind in ("float", "double"):
        return {"type": "float", "default": float(member.get("default", 0))}
    if kind == "enum":
        values = list(member.get("enum", []))
        default = member.get("default", values[0] if values else "")
        return {"type": "enum", "enum": {v: v for v in values}, "default": default}
    raise _FieldError(f"members/{member.get('name')}", f"unknown parameter type {kind!r}")


def normalize(doc: Document) -> Document:
    """Check every field of a 1.3 spec and fill the defaults the client fills."""
    for key in ("json_version", "id", "type", "name", "organ", "task", "status", "modality"):
        _text(doc, key)
    _text(doc, "version")
    for key in ("description", "website", "citation"):
        if key in doc and not isinstance(doc[key], str):
            raise _FieldError(key, "expected a string")
    maintainers = doc.setdefault("maintainers", [])
    if not isinstance(maintainers, list) or not all(isinstance(m, str) for m in maintainers):
        raise _FieldError("maintainers", "expected a list of strings")
    docker = _mapping(doc, "docker")
    for key in ("image_name", "image_tag", "data_path"):
        _text(docker, key, f"docker/{key}")
    if not doc["id"].isidentifier():
        raise _FieldError("id", f"{doc['id']!r} is not a valid Python identifier")
    doc.setdefault("params", {})
    seen: set[str] = set()
    for section in ("inputs", "outputs", "params"):
        for name, entry in _mapping(doc, section).items():
            where = f"{section}/{name}"
            if name in seen:
                raise _FieldError(where, "names must be unique across inputs, params, outputs")
            if not name.isidentifier():
                raise _FieldError(where, "a name must be a valid Python identifier")
            seen.add(name)
            if not isinstance(entry, dict):
                raise _FieldError(where, "expected an object")
            if section == "params":
                _normalize_param(entry, where)
            else:
                _normalize_io(entry, where, "pre" if section == "inputs" else "post")
    order = doc.get("order")
    if order is not None and not isinstance(order, list):
        raise _FieldError("order", "expected a list of names")
    flags = [e["flag"] for s in ("inputs", "outputs", "params") for e in doc[s].values()]
    if order:
        if len(order) != len(seen) or set(order) != seen:
            raise _FieldError("order", "must list every input, param and output name once")
    elif "" in flags:
        raise _FieldError("order", "needed when a flag is positional ('')")
    return doc


def _normalize_io(entry: Document, where: str, steps: str) -> None:
    for key in ("name", "description", "status", "flag", "extension", "type"):
        _text(entry, key, f"{where}/{key}")
    if entry["type"] not in IO_TYPES:
        raise _FieldError(f"{where}/type", f"{entry['type']!r} is not one of {IO_TYPES}")
    if entry["status"] not in STATUSES:
        raise _FieldError(f"{where}/status", f"{entry['status']!r} is not one of {STATUSES}")
    entry.setdefault(steps, [])
    labelmap = entry.setdefault("labelmap", False)
    if not isinstance(labelmap, bool):
        raise _FieldError(f"{where}/labelmap", "expected true or false")
    if entry["type"] == "segmentation":
        if "master" in entry and not isinstance(entry["master"], str):
            raise _FieldError(f"{where}/master", "expected the name of another input or output")
        colours = entry.setdefault("colours", {})
        if not isinstance(colours, dict):
            raise _FieldError(f"{where}/colours", "expected label -> [r, g, b(, a)]")
        for label, colour in colours.items():
            if (
                not isinstance(colour, list)
                or len(colour) not in (3, 4)
                or not all(_is_number(c) and 0 <= c <= 1 for c in colour)
            ):
                raise _FieldError(
                    f"{where}/colours/{label}", "expected 3 or 4 numbers between 0 and 1"
                )
            if len(colour) == 3:
                colours[label] = [*colour, 1]
        if not isinstance(entry.setdefault("names", {}), dict):
            raise _FieldError(f"{where}/names", "expected label -> name")
    operations = entry[steps]
    if not isinstance(operations, list):
        raise _FieldError(f"{where}/{steps}", "expected a list of operations")
    for index, step in enumerate(operations):
        step_where = f"{where}/{steps}/{index}"
        if not isinstance(step, dict):
            raise _FieldError(step_where, "expected an object")
        for key in ("name", "description", "status", "operation"):
            _text(step, key, f"{step_where}/{key}")
        if step["status"] not in STATUSES:
            raise _FieldError(f"{step_where}/status", f"not one of {STATUSES}")
        step.setdefault("locked", False)
        if not isinstance(step.get("params"), dict):
            raise _FieldError(f"{step_where}/params", "expected an object")


def _normalize_param(entry: Document, where: str) -> None:
    for key in ("name", "description", "flag", "type"):
        _text(entry, key, f"{where}/{key}")
    kind = entry["type"]
    if kind not in PARAM_TYPES:
        raise _FieldError(f"{where}/type", f"{kind!r} is not one of {PARAM_TYPES}")
    if "default" not in entry:
        raise _FieldError(f"{where}/default", "missing")
    default = entry["default"]
    if kind in ("int", "float"):
        low, high = INT_RANGE if kind == "int" else FLOAT_RANGE
        entry.setdefault("min", low)
        entry.setdefault("max", high)
        for key in ("default", "min", "max"):
            if not _is_number(entry[key]):
                raise _FieldError(f"{where}/{key}", "expected a number")
    elif kind == "bool" and not isinstance(default, bool):
        raise _FieldError(f"{where}/default", "expected true or false")
    elif kind in ("string", "enum") and not isinstance(default, str):
        raise _FieldError(f"{where}/default", "expected a string")
    if kind == "enum":
        choices = entry.get("enum")
        if isinstance(choices, list) and all(isinstance(c, str) for c in choices):
            entry["enum"] = {c: c for c in choices}
        elif not isinstance(choices, dict):
            raise _FieldError(f"{where}/enum", "expected a list of strings or a name -> value map")


def _text(doc: Mapping[str, Any], key: str, where: str = "") -> str:
    if key not in doc:
        raise _FieldError(where or key, "missing")
    value = doc[key]
    if not isinstance(value, str):
        raise _FieldError(where or key, "expected a string")
    return value


def _mapping(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise _FieldError(key, "missing" if value is None else "expected an object")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
