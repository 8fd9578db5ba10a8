"""``modelport bench MODEL``: what perf_analyzer gives Triton users, for any v2 server.

    modelport bench mlp --concurrency 1,8,32 --duration 10
    modelport bench mlp --protocol grpc --url 127.0.0.1:8001 --plot mlp.png --json mlp.json

Reads the model's metadata, builds one request (random seeded data or a file), checks
that it succeeds, then keeps 1, 8, 32... requests in flight for the duration each, with
wrk (HTTP) or h2load (gRPC) where installed, else an asyncio client, and prints req/s,
latency percentiles and errors per concurrency.
"""

from __future__ import annotations

import enum
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from modelport.cli.bench.asyncio_clients import AsyncioGrpcGenerator, AsyncioHttpGenerator
from modelport.cli.bench.compiled import H2loadGenerator, WrkGenerator, installed
from modelport.cli.bench.endpoints import (
    GrpcTarget,
    HttpTarget,
    check_grpc,
    check_http,
    grpc_signature,
    http_signature,
)
from modelport.cli.bench.errors import BenchError
from modelport.cli.bench.inputs import (
    InputTensor,
    ModelSignature,
    binary_body,
    file_inputs,
    grpc_frame,
    grpc_request,
    json_body,
    parse_shapes,
    random_inputs,
    resolve_shapes,
)
from modelport.cli.bench.load import LoadGenerator
from modelport.cli.bench.report import (
    BenchReport,
    plotting_available,
    table,
    write_json,
    write_plot,
)
from modelport.cli.client import credentials

console = Console()
err = Console(stderr=True)


class Transport(enum.StrEnum):
    http = "http"
    grpc = "grpc"


class GeneratorChoice(enum.StrEnum):
    auto = "auto"
    wrk = "wrk"
    h2load = "h2load"
    asyncio = "asyncio"


@dataclass(frozen=True, slots=True)
class BenchSetup:
    """One ``modelport bench``, as its options asked."""

    model: str
    version: str
    transport: Transport
    url: str
    levels: tuple[int, ...]
    duration_s: int
    input_source: str
    shapes: dict[str, tuple[int, ...]]
    binary: bool
    generator: GeneratorChoice
    key: str
    timeout_s: float
    seed: int


@dataclass(frozen=True, slots=True)
class PreparedLoad:
    """A checked request and the generator that will repeat it."""

    generator: LoadGenerator
    encoding: str
    url: str


def parse_levels(text: str) -> tuple[int, ...]:
    """``1,8,32`` as concurrency levels."""
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        levels = ()
    if not levels or min(levels) < 1:
        raise BenchError(f"--concurrency {text!r}: expected positive numbers, e.g. 1,8,32")
    return levels


def _tensors(setup: BenchSetup, signature: ModelSignature) -> list[InputTensor]:
    if setup.input_source == "random":
        shapes = resolve_shapes(signature, setup.shapes)
        return random_inputs(signature, shapes, setup.seed)
    if setup.shapes:
        raise BenchError("--shape is for random inputs: a file's arrays have their own shapes")
    return file_inputs(signature, Path(setup.input_source))


def _pick(setup: BenchSetup, compiled: str, log: Callable[[str], None]) -> bool:
    """Whether to use the compiled generator (wrk or h2load) rather than asyncio."""
    choice = setup.generator
    if choice == GeneratorChoice.asyncio:
        return False
    if choice not in (GeneratorChoice.auto, compiled):
        raise BenchError(f"--generator {choice}: {setup.transport.upper()} is driven by "
                         f"{compiled} or asyncio")  # fmt: skip
    if installed(compiled):
        return True
    if choice == compiled:
        raise BenchError(f"--generator {compiled}: {compiled} is not on the PATH")
    log(f"{compiled} is not installed: the asyncio client drives the load, and its own CPU "
        f"may cap the numbers (install {compiled} for the server's own limit)")  # fmt: skip
    return False


def _http_target(setup: BenchSetup) -> HttpTarget:
    verify: ssl.SSLContext | bool = True
    if credentials.ca_file is not None:  # the CLI's --ca-file, for an https:// server
        verify = ssl.create_default_context(cafile=credentials.ca_file)
    auth = {"Authorization": f"Bearer {setup.key}"} if setup.key else {}
    return HttpTarget(setup.url, setup.model, setup.version, auth, verify)


def _client_context(target: HttpTarget) -> ssl.SSLContext | None:
    """TLS for the asyncio client's connections: None for http://."""
    if not target.base_url.startswith("https://"):
        return None
    if isinstance(target.verify, ssl.SSLContext):
        return target.verify
    return ssl.create_default_context()


def _http_load(
    setup: BenchSetup, tensors: list[InputTensor], workdir: Path, log: Callable[[str], None]
) -> PreparedLoad:
    target = _http_target(setup)
    if setup.binary:
        binary = binary_body(tensors)
        body, encoding = binary.body, "binary tensor data"
        headers = {"Content-Type": "application/octet-stream",
                   "Inference-Header-Content-Length": str(binary.json_length)}  # fmt: skip
    else:
        body, encoding = json_body(tensors), "v2 JSON"
        headers = {"Content-Type": "application/json"}
    check_http(target, body, headers)
    headers.update(target.headers)
    generator: LoadGenerator
    if _pick(setup, "wrk", log):
        generator = WrkGenerator(url=target.infer_url, body=body, headers=headers,
                                 timeout_s=setup.timeout_s, workdir=workdir)  # fmt: skip
    else:
        generator = AsyncioHttpGenerator(url=target.infer_url, body=body, headers=headers,
                                         timeout_s=setup.timeout_s,
                                         context=_client_context(target))  # fmt: skip
    return PreparedLoad(generator, encoding, target.infer_url)


def _grpc_target(setup: BenchSetup) -> GrpcTarget:
    metadata = (("authorization", f"Bearer {setup.key}"),) if setup.key else ()
    return GrpcTarget(setup.url, setup.model, setup.version, metadata)


def _grpc_load(
    setup: BenchSetup, tensors: list[InputTensor], workdir: Path, log: Callable[[str], None]
) -> PreparedLoad:
    if setup.binary:
        raise BenchError("--binary is for HTTP: gRPC always sends raw_input_contents")
    target = _grpc_target(setup)
    request = grpc_request(setup.model, setup.version, tensors)
    check_grpc(target, request)
    generator: LoadGenerator
    if _pick(setup, "h2load", log):
        framed = grpc_frame(request.SerializeToString())
        generator = H2loadGenerator(url=target.infer_url, framed=framed,
                                    headers=dict(target.metadata), workdir=workdir)  # fmt: skip
    else:
        generator = AsyncioGrpcGenerator(address=target.address, request=request,
                                         metadata=target.metadata,
                                         timeout_s=setup.timeout_s)  # fmt: skip
    return PreparedLoad(generator, "raw_input_contents", target.infer_url)


def run_bench(setup: BenchSetup, log: Callable[[str], None]) -> BenchReport:
    """Check one request, then load the model at each concurrency in turn."""
    if setup.transport == Transport.http:
        signature = http_signature(_http_target(setup))
    else:
        signature = grpc_signature(_grpc_target(setup))
    tensors = _tensors(setup, signature)
    shown = ", ".join(f"{t.name} {t.datatype} {t.shape}" for t in tensors)
    with tempfile.TemporaryDirectory(prefix="modelport-bench-") as scratch:
        prepare = _http_load if setup.transport == Transport.http else _grpc_load
        load = prepare(setup, tensors, Path(scratch), log)
        log(f"checked: {load.url} answered one request ({shown})")
        results = []
        for level in setup.levels:
            result = load.generator.run(level, setup.duration_s)
            log(f"concurrency {level}: {result.requests_per_s:,.1f} req/s, "
                f"{result.errors} errors ({load.generator.name})")  # fmt: skip
            results.append(result)
    return BenchReport(
        model=setup.model,
        version=setup.version,
        protocol=setup.transport.value,
        url=load.url,
        encoding=load.encoding,
        generator=load.generator.name,
        latency_source=load.generator.latency_source,
        duration_s=setup.duration_s,
        inputs=tuple(tensors),
        results=tuple(results),
    )


def _server_url(url: str | None, transport: Transport) -> str:
    if transport == Transport.http:
        url = url or "http://127.0.0.1:8000"
        return (url if "://" in url else f"http://{url}").rstrip("/")
    url = url or "127.0.0.1:8001"
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("https", "grpcs"):
        raise BenchError(f"--url {url}: gRPC over TLS is not supported by modelport bench")
    return (rest if sep else url).rstrip("/")


def bench(
    model: Annotated[str, typer.Argument(help="Model name.")],
    *,
    url: Annotated[
        str | None,
        typer.Option(
            help="The server: http://HOST:PORT for HTTP [127.0.0.1:8000], "
            "HOST:PORT for gRPC [127.0.0.1:8001]."
        ),
    ] = None,
    protocol: Annotated[Transport, typer.Option(help="KServe v2 over HTTP or gRPC.")] = (
        Transport.http
    ),
    concurrency: Annotated[
        str, typer.Option(help="Requests kept in flight, one run each: 1,8,32.")
    ] = "1,8,32",
    duration: Annotated[int, typer.Option(min=1, help="Seconds per run.")] = 10,
    input_source: Annotated[
        str,
        typer.Option(
            "--input",
            help="'random' (seeded) or a file: .json {input: nested "
            "list}, .npz, or .npy for a one-input model.",
        ),
    ] = "random",
    shape: Annotated[
        list[str] | None,
        typer.Option(help="NAME:D1,D2,... for an input with dynamic dimensions (repeatable)."),
    ] = None,
    binary: Annotated[
        bool, typer.Option("--binary", help="HTTP: send binary tensor data, not v2 JSON.")
    ] = False,
    generator: Annotated[
        GeneratorChoice,
        typer.Option(help="Load generator: auto (wrk/h2load if installed, else asyncio)."),
    ] = GeneratorChoice.auto,
    key: Annotated[str, typer.Option(help="API key, sent as a Bearer token.")] = "",
    model_version: Annotated[str, typer.Option(help="Model version (default: latest).")] = "",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = (
        None
    ),
    plot: Annotated[
        Path | None, typer.Option(help="Draw latency against throughput into this PNG.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take.")] = 10.0,
) -> None:
    """Measure a model's throughput and latency on any KServe v2 server."""
    try:
        if plot is not None and not plotting_available():
            raise BenchError("--plot needs matplotlib: pip install 'modelport[bench]'")
        setup = BenchSetup(
            model=model,
            version=model_version,
            transport=protocol,
            url=_server_url(url, protocol),
            levels=parse_levels(concurrency),
            duration_s=duration,
            input_source=input_source,
            shapes=parse_shapes(shape or []),
            binary=binary,
            generator=generator,
            key=key or credentials.api_key,
            timeout_s=timeout,
            seed=seed,
        )
        report = run_bench(setup, lambda line: err.print(line, markup=False, highlight=False))
    except BenchError as exc:
        err.print(Text.assemble(("error: ", "red"), str(exc)))
        raise typer.Exit(1) from None
    console.print(table(report))
    console.print(report.sources, markup=False, highlight=False)
    if json_path is not None:
        write_json(json_path, report)
        err.print(f"results in {json_path}")
    if plot is not None:
        write_plot(plot, report)
        err.print(f"plot in {plot}")
