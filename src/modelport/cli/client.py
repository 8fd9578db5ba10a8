"""How the CLI talks to a server: one request, errors printed as the server said them.

An unreachable server or a 4xx/5xx answer prints one red line and exits with code 1.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console

err = Console(stderr=True)


@dataclass
class Credentials:
    """What every request of the CLI carries: the API key, and a CA for https://."""

    api_key: str = ""
    ca_file: Path | None = None


credentials = Credentials()


def use_credentials(api_key: str, ca_file: Path | None) -> None:
    """Set by the ``modelport`` command's ``--api-key`` / ``--ca-file`` options."""
    credentials.api_key, credentials.ca_file = api_key, ca_file


def request_options(headers: dict[str, str] | None = None) -> dict[str, Any]:
    """``headers`` plus the API key, and ``verify`` for TLS: httpx keyword arguments."""
    headers = dict(headers or {})
    if credentials.api_key:
        headers["Authorization"] = f"Bearer {credentials.api_key}"
    options: dict[str, Any] = {"headers": headers}
    if credentials.ca_file is not None:
        options["verify"] = ssl.create_default_context(cafile=credentials.ca_file)
    return options


def check(response: httpx.Response) -> Any:
    """The JSON of a good answer; for an error, print the server's message and exit 1."""
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        err.print(f"[red]error {response.status_code}:[/red] {message}")
        raise typer.Exit(1)
    return response.json() if response.content else None


def call(method: str, url: str, **kwargs: Any) -> Any:
    """One request (30 s timeout unless given), checked as :func:`check` does."""
    try:
        options = request_options(kwargs.pop("headers", None))
        timeout = kwargs.pop("timeout", 30)
        return check(httpx.request(method, url, timeout=timeout, **options, **kwargs))
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] cannot reach {url}: {exc}")
        raise typer.Exit(1) from None
