"""Models written to Triton's python-backend contract (``TritonPythonModel``), as a
Triton user writes them, and a repository of them with their model.yaml files.

Each model that batches also answers ``GATHERED``: how many requests its ``execute``
call was given, so a test can see the dynamic batcher hand it several at once.
"""

from __future__ import annotations

from pathlib import Path

from support.builders import add_sub_onnx, write_model

# Triton's add_sub example, batching: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.
# It waits delay_ms (a config parameter) per call, so concurrent requests pile up.
ADD_SUB = """\
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.args = args
        self.model_config = config = json.loads(args["model_config"])
        self.output0_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "OUTPUT0")["data_type"]
        )
        self.output1_dtype = pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, "OUTPUT1")["data_type"]
        )
        self.delay = float(config["parameters"]["delay_ms"]["string_value"]) / 1000
        pb_utils.Logger.log_info(f"add_sub initialized as {args['model_instance_name']}")

    def execute(self, requests):
        time.sleep(self.delay)
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            gathered = np.full((in_0.shape[0], 1), len(requests), np.int32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUTPUT0", (in_0 + in_1).astype(self.output0_dtype)),
                        pb_utils.Tensor("OUTPUT1", (in_0 - in_1).astype(self.output1_dtype)),
                        pb_utils.Tensor("GATHERED", gathered),
                    ]
                )
            )
        return responses

    def finalize(self):
        pb_utils.Logger.log_info("add_sub finalized")
"""

ADD_SUB_YAML = """\
runtime: python
max_batch_size: 16
inputs:
  - {name: INPUT0, datatype: FP32, shape: [4]}
  - {name: INPUT1, datatype: FP32, shape: [4]}
outputs:
  - {name: OUTPUT0, datatype: FP32, shape: [4]}
  - {name: OUTPUT1, datatype: FP32, shape: [4]}
  - {name: GATHERED, datatype: INT32, shape: [1]}
parameters: {delay_ms: "40"}
"""

# BYTES preprocessing: "1.5, 2, 3" -> SUM 6.5 and UPPER "1.5, 2, 3" upper-cased; text
# that is not numbers gets UPPER only, with SUM NaN.
PREPROCESS = """\
import numpy as np
import triton_python_backend_utils as pb_utils


def parse(text):
    try:
        return sum(float(part) for part in text.split(","))
    except ValueError:
        return float("nan")


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            decoded = [[item.decode("utf-8") for item in row] for row in texts]
            upper = np.array(
                [[text.upper().encode("utf-8") for text in row] for row in decoded],
                dtype=np.object_,
            )
            sums = np.array([[parse(text) for text in row] for row in decoded], np.float32)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("UPPER", upper), pb_utils.Tensor("SUM", sums)]
                )
            )
        return responses
"""

PREPROCESS_YAML = """\
runtime: python
max_batch_size: 8
inputs: [{name: TEXT, datatype: BYTES, shape: [1]}]
outputs:
  - {name: UPPER, datatype: BYTES, shape: [1]}
  - {name: SUM, datatype: FP32, shape: [1]}
"""

# BLS: asks the ONNX add_sub model for the sum and difference, answers their product.
BLS = """\
import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            # The target may be named in the request's parameters (to call a missing one).
            target = json.loads(request.parameters()).get("target", "addsub_onnx")
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            inner = pb_utils.InferenceRequest(
                model_name=target,
                requested_output_names=["OUTPUT0", "OUTPUT1"],
                inputs=[pb_utils.Tensor("INPUT0", a), pb_utils.Tensor("INPUT1", b)],
            )
            answer = inner.exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            total = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
            diff = pb_utils.get_output_tensor_by_name(answer, "OUTPUT1").as_numpy()
            product = pb_utils.Tensor("PRODUCT", total * diff)
            responses.append(pb_utils.InferenceResponse([product]))
        return responses
"""

BLS_YAML = """\
runtime: python
max_batch_size: 8
inputs:
  - {name: A, datatype: FP32, shape: [4]}
  - {name: B, datatype: FP32, shape: [4]}
outputs: [{name: PRODUCT, datatype: FP32, shape: [4]}]
"""

# The same through async execute: both halves asked at once with async_exec.
BLS_ASYNC = """\
import asyncio

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            calls = [
                pb_utils.InferenceRequest(
                    model_name="addsub_onnx",
                    requested_output_names=[name],
                    inputs=[pb_utils.Tensor("INPUT0", a), pb_utils.Tensor("INPUT1", b)],
                ).async_exec()
                for name in ("OUTPUT0", "OUTPUT1")
            ]
            total, diff = await asyncio.gather(*calls)
            for answer in (total, diff):
                if answer.has_error():
                    raise pb_utils.TritonModelException(answer.error().message())
            product = total.output_tensors()[0].as_numpy() * diff.output_tensors()[0].as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PRODUCT", product)]))
        return responses
"""

# Fails the requests whose INPUT0 is negative with their own error; answers the others.
PICKY = """\
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.04)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if (x < 0).any():
                error = pb_utils.TritonError(
                    f"negative input {x.min()} refused", pb_utils.TritonError.INVALID_ARG
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            gathered = np.full((x.shape[0], 1), len(requests), np.int32)
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("OUTPUT0", x * 2), pb_utils.Tensor("GATHERED", gathered)]
                )
            )
        return responses
"""

PICKY_YAML = """\
runtime: python
max_batch_size: 8
inputs: [{name: INPUT0, datatype: INT32, shape: [1]}]
outputs:
  - {name: OUTPUT0, datatype: INT32, shape: [1]}
  - {name: GATHERED, datatype: INT32, shape: [1]}
"""

# Raises from execute: every request of that call fails with the message.
RAISING = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        raise pb_utils.TritonModelException(f"cannot handle {len(requests)} request(s) today")
"""

RAISING_YAML = """\
runtime: python
max_batch_size: 8
inputs: [{name: INPUT0, datatype: INT32, shape: [1]}]
outputs: [{name: OUTPUT0, datatype: INT32, shape: [1]}]
"""


def write_triton_python_repository(root: Path) -> Path:
    """The models above, and the ONNX add_sub model the BLS ones call, under ``root``."""
    write_model(root, "add_sub", ADD_SUB_YAML, {"1/model.py": ADD_SUB})
    write_model(root, "preprocess", PREPROCESS_YAML, {"1/model.py": PREPROCESS})
    folder = write_model(root, "addsub_onnx", "runtime: onnx\nmax_batch_size: 8\n")
    add_sub_onnx(folder / "1" / "model.onnx", width=4)
    write_model(root, "bls", BLS_YAML, {"1/model.py": BLS})
    write_model(root, "bls_async", BLS_YAML, {"1/model.py": BLS_ASYNC})
    write_model(root, "picky", PICKY_YAML, {"1/model.py": PICKY})
    write_model(root, "raising", RAISING_YAML, {"1/model.py": RAISING})
    return root
