"""``modelport tritonserver ARGS``: tritonserver's command line, served by modelport.

The flags translate to Settings (:func:`tritonserver_settings`) and the server runs as
``modelport serve`` does. Triton's defaults hold unless a flag, the environment
(``MODELPORT_*``) or modelport.toml says otherwise: HTTP on 8000, gRPC on 8001, the
metrics port on 8002 (Triton's metric names), every interface (0.0.0.0), and
``--exit-on-error`` on.

``--model-control-mode``
    ``none`` (the default): every model loads at start. ``poll``: the same, and the
    repositories are scanned every ``--repository-poll-secs`` (15) for changes.
    ``explicit``: only the ``--load-model`` models load at start (``*``: all); the
    others load through the repository API (``POST /v2/repository/models/X/load``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelport.cli.upstream_flags import Flag, FlagError, UpstreamStart, flags_help, parse_flags
from modelport.settings import Settings

PROGRAM = "tritonserver"
SUMMARY = (
    "Serve as tritonserver does, taking its flags (Triton's ports, metrics and model control)."
)
CONTROL_MODES = ("none", "poll", "explicit")
DEFAULTS: dict[str, Any] = {
    "host": "0.0.0.0",
    "port": 8000,
    "grpc_port": 8001,
    "metrics_port": 8002,
    "exit_on_error": True,
}
DEFAULT_POLL_SECS = 15

_NO_EFFECT_CONFIG = "modelport always completes a model's configuration from its files"

FLAGS: tuple[Flag, ...] = (
    Flag(name="model-repository", kind="text", repeated=True,
         help="a repository folder of model folders (model.yaml); repeat it for several"),
    Flag(name="model-store", kind="text", repeated=True, help="the same as --model-repository"),
    Flag(name="http-port", kind="int", help="HTTP port [8000]"),
    Flag(name="grpc-port", kind="int", help="gRPC port [8001]"),
    Flag(name="metrics-port", kind="int", help="metrics port, Triton's names at /metrics [8002]"),
    Flag(name="http-address", kind="text", help="address to listen on [0.0.0.0]"),
    Flag(name="grpc-address", kind="text", help="the same address as --http-address"),
    Flag(name="metrics-address", kind="text", help="the same address as --http-address"),
    Flag(name="allow-http", kind="bool", help="must stay true: modelport always serves HTTP"),
    Flag(name="allow-grpc", kind="bool", help="false: no gRPC port"),
    Flag(name="allow-metrics", kind="bool", help="false: no metrics port"),
    Flag(name="model-control-mode", kind="text", help="none, poll or explicit [none]"),
    Flag(name="load-model", kind="text", repeated=True,
         help="with explicit model control: a model loaded at start ('*': all)"),
    Flag(name="repository-poll-secs", kind="int", help="with poll model control: seconds [15]"),
    Flag(name="exit-on-error", kind="bool", help="stop when a model fails to load at start [true]"),
    Flag(name="log-verbose", kind="int", help="1 or more: debug logs"),
    Flag(name="strict-model-config", kind="bool", unused=_NO_EFFECT_CONFIG, help=""),
    Flag(name="disable-auto-complete-config", kind="bool", unused=_NO_EFFECT_CONFIG, help=""),
    Flag(name="strict-readiness", kind="bool", help="",
         unused="ready means every model has finished loading (failed ones do not block it)"),
    Flag(name="log-info", kind="bool", unused="use --log-verbose", help=""),
    Flag(name="log-warning", kind="bool", unused="use --log-verbose", help=""),
    Flag(name="log-error", kind="bool", unused="use --log-verbose", help=""),
    Flag(name="allow-gpu-metrics", kind="bool", help="",
         unused="GPU metrics are served wherever NVML runs"),
    Flag(name="allow-cpu-metrics", kind="bool", unused="no CPU metrics are served", help=""),
    Flag(name="id", kind="text", unused="the server's name is modelport", help=""),
    Flag(name="backend-directory", kind="text", unused="runtimes are built in", help=""),
    Flag(name="backend-config", kind="text", repeated=True, help="",
         unused="runtimes are configured in each model.yaml"),
    Flag(name="exit-timeout-secs", kind="int", unused="the server stops within 10 s", help=""),
    Flag(name="pinned-memory-pool-byte-size", kind="int", unused="no pinned pool", help=""),
    Flag(name="cuda-memory-pool-byte-size", kind="text", unused="no CUDA pool", help=""),
    Flag(name="metrics-interval-ms", kind="int", unused="metrics are read at scrape", help=""),
)  # fmt: skip


def tritonserver_settings(
    args: list[str], *, environ: Mapping[str, str] | None = None, config: Path | None = None
) -> UpstreamStart:
    """The Settings of a tritonserver command line; FlagError (or SettingsError) names
    what is wrong, HelpAsked for --help."""
    parsed = parse_flags(args, FLAGS, program=PROGRAM)
    repositories = [*parsed.get("model-repository", []), *parsed.get("model-store", [])]
    if not repositories:
        raise FlagError(
            f"{PROGRAM}: --model-repository is required: the folder of model folders "
            "(repeat it for several)"
        )
    mode = parsed.get("model-control-mode", "none")
    if mode not in CONTROL_MODES:
        raise FlagError(
            f"{PROGRAM}: --model-control-mode={mode}: expected one of {', '.join(CONTROL_MODES)}"
        )
    load = parsed.get("load-model", [])
    if load and mode != "explicit":
        raise FlagError(f"{PROGRAM}: --load-model needs --model-control-mode=explicit")
    if parsed.get("allow-http") is False:
        raise FlagError(f"{PROGRAM}: --allow-http=false: modelport always serves HTTP")
    flags: dict[str, Any] = {
        "repository": repositories[0],
        "extra_repositories": tuple(repositories[1:]),
        "host": _one_address(parsed.values),
        "port": parsed.get("http-port"),
        "grpc_port": 0 if parsed.get("allow-grpc") is False else parsed.get("grpc-port"),
        "metrics_port": 0 if parsed.get("allow-metrics") is False else parsed.get("metrics-port"),
        "exit_on_error": parsed.get("exit-on-error"),
        "poll_seconds": (
            parsed.get("repository-poll-secs", DEFAULT_POLL_SECS) if mode == "poll" else 0
        ),
        "startup_models": tuple(load) if mode == "explicit" else ("*",),
        "log_level": "debug" if parsed.get("log-verbose", 0) > 0 else None,
    }
    settings = Settings.load(flags, environ, config, defaults=DEFAULTS)
    return UpstreamStart(settings, parsed.notes)


def _one_address(values: Mapping[str, Any]) -> str | None:
    given = {values[f] for f in ("http-address", "grpc-address", "metrics-address") if f in values}
    if len(given) > 1:
        raise FlagError(
            f"{PROGRAM}: --http-address, --grpc-address and --metrics-address differ "
            f"({', '.join(sorted(given))}); modelport listens on one address for all three"
        )
    return given.pop() if given else None


def tritonserver_help() -> str:
    return flags_help(PROGRAM, SUMMARY, FLAGS)
