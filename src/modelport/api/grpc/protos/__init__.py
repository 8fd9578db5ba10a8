"""The KServe v2 protos and their generated modules (``scripts/gen_protos.py``).

The generated modules register their descriptors in :data:`POOL`, not in protobuf's
default pool: ``tritonclient.grpc`` registers the same ``inference.*`` names there, and
a process (a test, a remote backend) may well import both.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
