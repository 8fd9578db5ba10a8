"""The ``modelport`` command (Typer) and its small HTTP client."""
