"""The KServe v2 protos and their generated modules (``scripts/gen_protos.py``).

The generated modules register their descriptors in :data:`POOL`, not in protobuf's
default pool: ``tritonclient.grpc`` registers the same ``inference.*`` names there, and
a process (a test, a remote backend) may well import both. TensorFlow Serving's protos
(``tensorflow/``, ``tensorflow_serving/``) register there too, beside the well-known
types they import, which a fresh pool lacks.
"""

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
for _well_known in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_well_known.DESCRIPTOR.serialized_pb)
