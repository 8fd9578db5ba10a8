"""``modelport bench``: load a model on any KServe v2 server and report speed.

The pieces, lowest first: ``errors`` (what stops a run), ``inputs`` (the model's
signature read from its metadata, and the one request every run repeats), ``endpoints``
(metadata and one checked request, over HTTP or gRPC), ``load`` (a run's result and
what a load generator is), ``compiled`` (wrk and h2load), ``asyncio_clients`` (the
fallback), ``report`` (table, JSON, plot) and ``command`` (the Typer command).
"""
