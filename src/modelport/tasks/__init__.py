"""Tasks: long jobs (files in, files out) queued durably and run by workers.

``TaskService`` is the core the HTTP routes and the CLI call; ``TaskStore`` keeps the
records (SQLAlchemy), ``BlobStore`` the files (fsspec), a ``Broker`` hands task ids to
``TaskWorker`` slots, which run them through an executor (``ContainerRuntime``).
"""
