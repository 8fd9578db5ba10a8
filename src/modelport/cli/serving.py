"""Running a server from the command line: what ``modelport serve``, ``modelport
tritonserver`` and ``modelport tensorflow_model_server`` share once their arguments are
Settings. The server itself is ``server/serve.py`` (several processes:
``server/supervisor.py``); this prints where it answers and turns its start-up errors
into a message and an exit status."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from modelport import __version__
from modelport.cli.upstream_flags import FlagError, HelpAsked, UpstreamStart
from modelport.redaction import redact_text, redact_url
from modelport.settings import Settings, SettingsError

Translate = Callable[[list[str]], UpstreamStart]
console = Console()
err = Console(stderr=True, soft_wrap=True)


def print_ready(settings: Settings, service: Any = None, *, monitoring: str = "") -> None:
    """Where the server answers, and the models that do not serve with the reason;
    ``monitoring``: TF Serving's metrics path on the HTTP port, when served."""
    from modelport.server.listeners import compat_addresses

    scheme = "https" if settings.tls_cert else "http"
    base = f"{scheme}://{settings.host}:{settings.port}"
    serving = redact_url(settings.repository) if settings.repository else "no repository folder"
    console.print(f"[bold green]modelport {__version__}[/] serving {serving}")
    for folder in settings.extra_repositories:
        console.print(f"  and the repository {folder}")
    if service is None:  # several processes: each has its own registry
        console.print(f"  processes: {settings.processes}, each with every model")
    else:
        rows = service.index()
        ok = sum(1 for r in rows if r.state == "READY")
        console.print(f"  models: {ok} ready of {len({r.name for r in rows})}")
        for row in rows:
            if row.state != "READY":
                console.print(f"  [yellow]{row.name}[/]: {row.state} {redact_text(row.reason)}")
    console.print(f"  API:     {base}/v2")
    if settings.grpc_port:
        console.print(f"  gRPC:    {settings.host}:{settings.grpc_port} (KServe v2)")
    console.print(f"  docs:    {base}/docs")
    console.print(f"  metrics: {base}/metrics")
    if settings.metrics_port:
        triton = f"{scheme}://{settings.host}:{settings.metrics_port}/metrics"
        console.print(f"  metrics: {triton} (Triton's names)")
    if monitoring:
        console.print(f"  metrics: {base}{monitoring} (TF Serving's names)")
    for address in compat_addresses(settings):
        access = " (open: no key asked)" if address.open else ""
        console.print(f"  {address.name}: {address.url(bool(settings.tls_cert))}{access}")


def run_server(settings: Settings, *, monitoring: str = "") -> None:
    """Serve until interrupted; a server that cannot start prints why and exits with 1
    (2 for a bad setting or file)."""
    import uvloop

    from modelport.api.grpc.server import GrpcListenError
    from modelport.security.keys import KeyFileError
    from modelport.security.tls import TlsError
    from modelport.server.listeners import ListenError
    from modelport.server.repository import StartupFailed
    from modelport.server.serve import serve as run_serve
    from modelport.server.supervisor import supervise
    from modelport.supply.pull import PullError

    def ready(service: Any = None) -> None:
        print_ready(settings, service, monitoring=monitoring)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            if settings.processes > 1:
                code = uvloop.run(supervise(settings, on_ready=ready))
                if code:
                    raise typer.Exit(code)
            else:
                uvloop.run(run_serve(settings, on_ready=ready))
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except (
        GrpcListenError,
        ListenError,
        PullError,
        TlsError,
        KeyFileError,
        StartupFailed,
    ) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def run_upstream(
    args: list[str], *, program: str, translate: Translate, help_text: Callable[[], str]
) -> None:
    """Serve as the upstream server ``program`` would with ``args``: ``translate`` them to
    Settings; a bad command line or file prints why and exits with 2, ``--help`` prints
    ``help_text()``; each flag that means nothing here is said once."""
    try:
        start = translate(args)
    except HelpAsked:
        console.print(help_text(), markup=False, highlight=False)
        raise typer.Exit(0) from None
    except (FlagError, SettingsError) as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    for note in start.notes:
        err.print(f"{program}: {note}", markup=False, highlight=False)
    run_server(start.settings, monitoring=start.monitoring)
