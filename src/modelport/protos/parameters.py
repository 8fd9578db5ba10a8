"""Plain Python values into KServe v2 ``InferParameter`` maps, shared by the gRPC
adapter (responses) and the remote runtime (requests to another v2 server)."""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from typing import Any


def set_parameters(target: MutableMapping[str, Any], values: Mapping[str, Any]) -> None:
    """Plain values -> an InferParameter map; other types travel as their JSON text."""
    for key, value in values.items():
        param = target[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int) and value >= 2**63:
            param.uint64_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            param.string_param = json.dumps(value, default=str)
