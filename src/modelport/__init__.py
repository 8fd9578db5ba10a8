"""modelport: a self-hosted inference server.

The public API is what a user extends or embeds: the runtime protocol and its
context, the tensor messages, the errors, and the settings.
"""

from modelport.core.runtime import ModelCaller, Runtime, RuntimeContext, Signature
from modelport.errors import ErrorKind, ModelportError
from modelport.settings import Settings
from modelport.spec import ModelSpec, TensorSpec
from modelport.tensors import InferenceRequest, InferenceResponse, RequestedOutput, Tensor

__version__ = "0.1.0"

__all__ = [
    "ErrorKind",
    "InferenceRequest",
    "InferenceResponse",
    "ModelCaller",
    "ModelSpec",
    "ModelportError",
    "RequestedOutput",
    "Runtime",
    "RuntimeContext",
    "Settings",
    "Signature",
    "Tensor",
    "TensorSpec",
    "__version__",
]
