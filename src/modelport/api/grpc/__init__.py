"""The gRPC adapter: KServe v2 (``inference.GRPCInferenceService``) and gRPC health."""
