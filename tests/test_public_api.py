"""The public API is exactly what ``modelport.__all__`` lists; changing it is deliberate."""

from __future__ import annotations

import modelport


def test_all_is_pinned() -> None:
    assert modelport.__all__ == [
        "ErrorKind",
        "InferenceFailed",
        "InferenceRequest",
        "InferenceResponse",
        "InvalidInput",
        "ModelCaller",
        "ModelNotFound",
        "ModelSpec",
        "ModelUnavailable",
        "ModelportError",
        "Overloaded",
        "RequestedOutput",
        "RetryLater",
        "Runtime",
        "RuntimeContext",
        "Settings",
        "Signature",
        "SpecError",
        "Tensor",
        "TensorSpec",
        "Unsupported",
        "__version__",
    ]


def test_every_public_name_resolves() -> None:
    for name in modelport.__all__:
        assert getattr(modelport, name) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from modelport import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(modelport.__all__)


def test_version_is_a_string() -> None:
    assert isinstance(modelport.__version__, str) and modelport.__version__.count(".") == 2
