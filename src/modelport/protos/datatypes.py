"""Which protobuf field carries each KServe v2 datatype, written once for the gRPC
servers (``api/grpc/convert.py``, ``api/grpc/tfserving.py``) and the remote clients
(``runtimes/remote_v2.py``, ``runtimes/remote_tfserving.py``) alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelport.protos.tensorflow.core.framework import types_pb2


@dataclass(frozen=True, slots=True)
class ValueList:
    """A message's repeated field that carries one datatype's values, and the numpy
    type its values have before narrowing to the tensor's own datatype."""

    field: str
    wide: type[np.generic]


# KServe v2's InferTensorContents. Narrow integers travel widened (INT8 in int_contents,
# UINT16 in uint_contents...); FP16 and BF16 have no list (they travel raw).
V2_CONTENTS: dict[str, ValueList] = {
    "BOOL": ValueList("bool_contents", np.bool_),
    "UINT8": ValueList("uint_contents", np.uint32),
    "UINT16": ValueList("uint_contents", np.uint32),
    "UINT32": ValueList("uint_contents", np.uint32),
    "UINT64": ValueList("uint64_contents", np.uint64),
    "INT8": ValueList("int_contents", np.int32),
    "INT16": ValueList("int_contents", np.int32),
    "INT32": ValueList("int_contents", np.int32),
    "INT64": ValueList("int64_contents", np.int64),
    "FP32": ValueList("fp32_contents", np.float32),
    "FP64": ValueList("fp64_contents", np.float64),
    "BYTES": ValueList("bytes_contents", np.object_),
}

# TensorFlow's DataType of each v2 datatype, and back.
TF_DATATYPES: dict[str, types_pb2.DataType] = {
    "BOOL": types_pb2.DT_BOOL,
    "UINT8": types_pb2.DT_UINT8,
    "UINT16": types_pb2.DT_UINT16,
    "UINT32": types_pb2.DT_UINT32,
    "UINT64": types_pb2.DT_UINT64,
    "INT8": types_pb2.DT_INT8,
    "INT16": types_pb2.DT_INT16,
    "INT32": types_pb2.DT_INT32,
    "INT64": types_pb2.DT_INT64,
    "FP16": types_pb2.DT_HALF,
    "FP32": types_pb2.DT_FLOAT,
    "FP64": types_pb2.DT_DOUBLE,
    "BYTES": types_pb2.DT_STRING,
}
V2_DATATYPES: dict[int, str] = {tf: v2 for v2, tf in TF_DATATYPES.items()}

# TensorProto's typed lists, as TensorFlow fills them: narrow integers in int_val, FP16
# as its bits in half_val.
TF_VALUES: dict[str, ValueList] = {
    "BOOL": ValueList("bool_val", np.bool_),
    "UINT8": ValueList("int_val", np.int32),
    "UINT16": ValueList("int_val", np.int32),
    "UINT32": ValueList("uint32_val", np.uint32),
    "UINT64": ValueList("uint64_val", np.uint64),
    "INT8": ValueList("int_val", np.int32),
    "INT16": ValueList("int_val", np.int32),
    "INT32": ValueList("int_val", np.int32),
    "INT64": ValueList("int64_val", np.int64),
    "FP16": ValueList("half_val", np.int32),
    "FP32": ValueList("float_val", np.float32),
    "FP64": ValueList("double_val", np.float64),
    "BYTES": ValueList("string_val", np.object_),
}
