"""TF Serving's client stubs for the tests, standing in for ``tensorflow-serving-api``.

That package's generated modules import TensorFlow itself (``tensorflow.core.framework``),
far too big to install for a test, so ``scripts/gen_protos.py --client
tests/api/grpc/tfs_client`` compiles the same public protos that modelport serves into
this package. Like the real modules, they register in protobuf's default pool; only the
import prefix differs (``tfs_client.tensorflow_serving.apis`` for
``tensorflow_serving.apis``). Generated: do not edit, regenerate.
"""
