"""modelport: a self-hosted inference server.

The public API is what a user extends or embeds: the runtime protocol and its
context, the tensor messages, the errors a runtime raises (each carries the
:class:`ErrorKind` that decides its HTTP and gRPC status), and the settings.
"""

from modelport.core.runtime import ModelCaller, Runtime, RuntimeContext, Signature
from modelport.errors import (
    ErrorKind,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    ModelportError,
    ModelUnavailable,
    Overloaded,
    RetryLater,
    SpecError,
    Unsupported,
)
from modelport.settings import Settings
from modelport.spec import ModelSpec, TensorSpec
from modelport.tensors import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

__version__ = "0.1.0"

__all__ = [
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
