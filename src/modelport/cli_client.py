"""How the CLI talks to a server: one request, errors printed as the server said them.

An unreachable server or a 4xx/5xx answer prints one red line and exits with code 1.
"""

from __future__ import annotations

from typing import Any

import httpx
import typer
from rich.console import Console

err = Console(stderr=True)


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
        return check(httpx.request(method, url, timeout=kwargs.pop("timeout", 30), **kwargs))
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] cannot reach {url}: {exc}")
        raise typer.Exit(1) from None
