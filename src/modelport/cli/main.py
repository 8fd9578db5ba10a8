"""The ``modelport`` command: serve, pull, models, predict, bench, encrypt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from modelport import __version__
from modelport.cli.bench.command import bench
from modelport.cli.client import call, use_credentials
from modelport.cli.keys import keys_app
from modelport.cli.serving import run_server, run_upstream
from modelport.cli.tasks import tasks_app
from modelport.cli.tensorflow_model_server import PROGRAM as TENSORFLOW_MODEL_SERVER
from modelport.cli.tensorflow_model_server import (
    tensorflow_model_server_help,
    tensorflow_model_server_settings,
)
from modelport.cli.tritonserver import PROGRAM as TRITONSERVER
from modelport.cli.tritonserver import tritonserver_help, tritonserver_settings
from modelport.cli.worker import worker, workers
from modelport.codecs.v2_binary import encode_tensor
from modelport.redaction import redact_text
from modelport.settings import Settings, SettingsError
from modelport.tensors import numpy_dtype

app = typer.Typer(
    help="modelport: a self-hosted inference server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8000"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
UrlOption = Annotated[
    str, typer.Option("--url", envvar="MODELPORT_URL", help="The server's base address.")
]


def _version(value: bool) -> None:
    if value:
        console.print(f"modelport {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    api_key: Annotated[
        str,
        typer.Option(
            envvar="MODELPORT_API_KEY", help="API key sent by the client commands (Bearer)."
        ),
    ] = "",
    ca_file: Annotated[
        Path | None,
        typer.Option(envvar="MODELPORT_CA_FILE", help="CA file to verify an https:// server."),
    ] = None,
) -> None:
    """modelport: a self-hosted inference server."""
    use_credentials(api_key, ca_file)


@app.command()
def serve(
    repository: Annotated[
        str | None,
        typer.Argument(
            help="Model repository folder, or a URL (s3://bucket/prefix, gs://...) to pull "
            "and serve (default: bundled examples)."
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port [8000].")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="gRPC port (KServe v2) [8001]; 0 turns gRPC off.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="A modelport.toml settings file.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    log_format: Annotated[str | None, typer.Option(help="text or json.")] = None,
    poll: Annotated[
        float | None,
        typer.Option(help="Rescan the repository every SECONDS and load what changed [0: off]."),
    ] = None,
    max_loaded_models: Annotated[
        int | None,
        typer.Option(help="Models loaded at once; past it the least recently used unloads."),
    ] = None,
    max_loaded_bytes: Annotated[
        int | None,
        typer.Option(help="Model files' bytes loaded at once; past it the LRU unloads."),
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(help="S3-compatible endpoint (MinIO...) for a repository URL."),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(help="Redis URL (redis://host:6379/0): share work with 'modelport worker's."),
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option(help="PEM certificate: serve HTTPS and gRPC over TLS.")
    ] = None,
    tls_key: Annotated[str | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        str | None, typer.Option(help="PEM CA: require client certificates it signed.")
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(help="Server processes sharing the ports, each with the models [1]."),
    ] = None,
    compat: Annotated[
        list[str] | None,
        typer.Option(
            help="Serve an upstream API at the root of a listener of its own: "
            "NAME=[HOST:]PORT, e.g. inference-server=8123 (repeatable)."
        ),
    ] = None,
    ablinfer_models: Annotated[
        str | None,
        typer.Option(help="Folder of ABLInfer JSON model specs, served by --compat ablinfer=PORT."),
    ] = None,
) -> None:
    """Serve a model repository over HTTP and gRPC (KServe v2)."""
    flags = {"repository": repository, "host": host, "port": port, "grpc_port": grpc_port,
             "log_level": log_level, "log_format": log_format, "poll_seconds": poll,
             "max_loaded_models": max_loaded_models,
             "max_loaded_bytes": max_loaded_bytes,
             "repository_endpoint_url": endpoint_url, "broker": broker, "tls_cert": tls_cert,
             "tls_key": tls_key, "tls_client_ca": tls_client_ca,
             "processes": processes, "compat": compat or None,
             "ablinfer_models": ablinfer_models}  # fmt: skip
    try:
        settings = Settings.load(flags, config=config)
    except SettingsError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    run_server(settings)


@app.command()
def pull(
    url: Annotated[
        str, typer.Argument(help="Repository URL: s3://bucket/prefix, gs://..., a folder.")
    ],
    dest: Annotated[Path, typer.Argument(help="Local folder to copy it into.")],
    endpoint_url: Annotated[
        str,
        typer.Option(help="S3-compatible endpoint (MinIO...) [AWS_ENDPOINT_URL]."),
    ] = "",
) -> None:
    """Copy a model repository into DEST, skipping files that are already there."""
    from modelport.supply.pull import PullError
    from modelport.supply.pull import pull as pull_repository

    try:
        result = pull_repository(url, dest, endpoint_url=endpoint_url, console=err)
    except PullError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(
        f"{dest}: {len(result.copied)} copied ({result.bytes_copied} bytes), "
        f"{len(result.skipped)} unchanged, {len(result.removed)} removed"
    )


def _get(url: str, path: str, **kwargs: Any) -> Any:
    return call(kwargs.pop("method", "GET"), url + path, **kwargs)


@app.command()
def models(url: UrlOption = DEFAULT_URL) -> None:
    """List the repository's models: name, version, state and reason."""
    rows = _get(url, "/v2/repository/index", method="POST", json={})
    table = Table("name", "version", "state", "reason")
    for row in rows:
        style = "green" if row["state"] == "READY" else "yellow"
        table.add_row(row["name"], row.get("version", ""), f"[{style}]{row['state']}[/]",
                      redact_text(row.get("reason", "")))  # fmt: skip
    console.print(table)


def _load_input(path: Path, spec: dict[str, Any], batches: bool) -> tuple[str, np.ndarray]:
    """One input file as an array of ``spec``'s datatype (a whole file for BYTES)."""
    suffix = path.suffix.lower()
    datatype = spec["datatype"]
    if suffix in IMAGE_SUFFIXES or (datatype == "BYTES" and suffix not in {".npy", ".json"}):
        if datatype != "BYTES":
            raise typer.BadParameter(
                f"input '{spec['name']}' takes {datatype} {spec['shape']}, not a file's bytes; "
                "give a .npy or .json file"
            )
        array = np.empty((1, 1) if batches else (1,), dtype=np.object_)
        array.flat[0] = path.read_bytes()
        return datatype, array
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix == ".json":
        array = np.asarray(json.loads(path.read_text()))
    else:
        raise typer.BadParameter(f"{path}: expected .npy, .json or an image file")
    if batches and array.ndim == len(spec["shape"]) - 1:
        array = array[np.newaxis]
    if datatype != "BYTES":
        array = array.astype(numpy_dtype(datatype))
    return datatype, array


def _binary_request(arrays: dict[str, tuple[str, np.ndarray]]) -> tuple[bytes, int]:
    """A v2 request with every input as binary data, and its JSON part's length."""
    chunks = {name: encode_tensor(a, dt) for name, (dt, a) in arrays.items()}
    head = json.dumps({
        "inputs": [
            {"name": name, "datatype": dt, "shape": list(a.shape),
             "parameters": {"binary_data_size": len(chunks[name])}}
            for name, (dt, a) in arrays.items()
        ],
        "parameters": {"binary_data_output": False},
    }).encode()  # fmt: skip
    return head + b"".join(chunks.values()), len(head)


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Model name.")],
    inputs: Annotated[
        list[str], typer.Argument(help="Input files (.npy, .json or an image); NAME=FILE to pick.")
    ],
    url: UrlOption = DEFAULT_URL,
    version: Annotated[str, typer.Option(help="Model version (default: latest).")] = "",
) -> None:
    """Run a model on files and print a readable result."""
    base = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
    meta = _get(url, base)
    specs = {t["name"]: t for t in meta["inputs"]}
    batches = bool(meta["inputs"]) and meta["inputs"][0]["shape"][:1] == [-1]
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    for i, item in enumerate(inputs):
        name, sep, file = item.partition("=")
        if not sep:
            name, file = meta["inputs"][min(i, len(meta["inputs"]) - 1)]["name"], item
        if name not in specs:
            raise typer.BadParameter(f"model '{model}' has no input '{name}'; it has {list(specs)}")
        path = Path(file)
        if not path.is_file():
            raise typer.BadParameter(f"{path}: no such file")
        arrays[name] = _load_input(path, specs[name], batches)
    body, length = _binary_request(arrays)
    headers = {"Inference-Header-Content-Length": str(length)}
    result = _get(url, base + "/infer", method="POST", content=body, headers=headers)
    table = Table(
        "output", "datatype", "shape", "value", title=f"{model} v{result['model_version']}"
    )
    for out in result["outputs"]:
        data = out.get("data", [])
        shown = ", ".join(_fmt(x) for x in data[:12]) + (" ..." if len(data) > 12 else "")
        table.add_row(out["name"], out["datatype"], str(out["shape"]), shown)
    console.print(table)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command()
def encrypt(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Files, or model folders (every model.onnx inside)."),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="MODELPORT_MODEL_KEY_FILE",
            help="File holding the key [default: the MODELPORT_MODEL_KEY variable].",
        ),
    ] = None,
    remove_plain: Annotated[
        bool, typer.Option("--remove-plain", help="Delete each plain file once encrypted.")
    ] = False,
    new_key: Annotated[
        bool, typer.Option("--new-key", help="Print a fresh random key and exit.")
    ] = False,
) -> None:
    """Write an encrypted copy (AES-256-GCM), <file>.enc, beside each model file."""
    from modelport.supply import encryption as crypto

    if new_key:
        if paths:
            raise typer.BadParameter("--new-key prints a key and takes no paths")
        print(crypto.new_key())
        return
    if not paths:
        raise typer.BadParameter("give the files or model folders to encrypt")
    try:
        key = crypto.key_provider(str(key_file or ""))()
    except crypto.KeyUnavailable as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.rglob("model.onnx"))
            if not found:
                raise typer.BadParameter(f"{path}: no model.onnx inside")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise typer.BadParameter(f"{path}: no such file or folder")
    for file in files:
        if file.name.endswith(crypto.ENCRYPTED_SUFFIX):
            raise typer.BadParameter(f"{file}: already encrypted")
    for file in files:
        target = crypto.encrypt_file(file, key, remove_plain)
        console.print(f"{file} -> {target}" + (" (plain file removed)" if remove_plain else ""))


# The upstream servers' command lines: their flags are read by their own parsers
# (cli/upstream_flags.py), so Typer passes every argument through.
UPSTREAM = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("tritonserver", context_settings=UPSTREAM, add_help_option=False)
def tritonserver(ctx: typer.Context) -> None:
    """Serve as tritonserver does, taking its flags (modelport tritonserver --help)."""
    run_upstream(
        list(ctx.args),
        program=TRITONSERVER,
        translate=tritonserver_settings,
        help_text=tritonserver_help,
    )


@app.command("tensorflow_model_server", context_settings=UPSTREAM, add_help_option=False)
def tensorflow_model_server(ctx: typer.Context) -> None:
    """Serve as TF Serving's tensorflow_model_server does, taking its flags (--help)."""
    run_upstream(
        list(ctx.args),
        program=TENSORFLOW_MODEL_SERVER,
        translate=tensorflow_model_server_settings,
        help_text=tensorflow_model_server_help,
    )


app.command()(bench)
app.add_typer(tasks_app, name="tasks")
app.command()(worker)
app.command()(workers)
app.add_typer(keys_app, name="keys")


def main() -> None:
    app()
