"""The HTTP adapter: KServe v2 REST, health, metrics and the OpenAPI docs."""
