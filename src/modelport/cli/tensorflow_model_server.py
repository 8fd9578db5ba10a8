"""``modelport tensorflow_model_server ARGS``: TF Serving's command line, served by
modelport.

The flags translate to Settings (:func:`tensorflow_model_server_settings`) and the
server runs as ``modelport serve`` does. TF Serving's defaults hold unless a flag, the
environment (``MODELPORT_*``) or modelport.toml says otherwise: gRPC on 8500, REST on
8501, every interface (0.0.0.0), model folders polled every second for new versions,
warm-up records run, TensorFlow choosing its thread pools.

``--model_base_path`` is one model's folder (its version folders inside), served as
``--model_name`` (``default``); ``--model_config_file`` lists several
(``supply/tfserving_config.py``). ``--enable_batching`` batches them with the
parameters of ``--batching_parameters_file`` (TF Serving's defaults without one);
``--monitoring_config_file`` serves TF Serving's metrics on the REST port.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelport.cli.upstream_flags import Flag, FlagError, UpstreamStart, flags_help, parse_flags
from modelport.settings import Settings
from modelport.supply.tfserving_config import read_monitoring_path

PROGRAM = "tensorflow_model_server"
SUMMARY = "Serve as TF Serving's tensorflow_model_server does, taking its flags."
DEFAULT_MODEL_NAME = "default"
DEFAULTS: dict[str, Any] = {
    "host": "0.0.0.0",
    "port": 8501,
    "grpc_port": 8500,
    "poll_seconds": 1.0,
    "tensorflow_intra_op_parallelism": 0,
    "tensorflow_inter_op_parallelism": 0,
}

_GRPC = "modelport's gRPC runs on its event loop, with no thread pool to size"

FLAGS: tuple[Flag, ...] = (
    Flag(name="port", kind="int", help="gRPC port (TF Serving's and KServe v2's APIs) [8500]"),
    Flag(name="rest_api_port", kind="int", help="REST port (HTTP; 0 is refused here) [8501]"),
    Flag(name="model_name", kind="text", help="the model's name [default]"),
    Flag(name="model_base_path", kind="text",
         help="the model's folder, holding its version folders (1/, 2/...)"),
    Flag(name="model_config_file", kind="text", help="a model_config_list text proto"),
    Flag(name="model_config_file_poll_wait_seconds", kind="int",
         help="read --model_config_file again this often (0: once) [0]"),
    Flag(name="file_system_poll_wait_seconds", kind="int",
         help="look for new versions this often (0: never) [1]"),
    Flag(name="enable_batching", kind="bool", help="batch requests [false]"),
    Flag(name="batching_parameters_file", kind="text", help="a BatchingParameters text proto"),
    Flag(name="enable_model_warmup", kind="bool",
         help="run assets.extra/tf_serving_warmup_requests as models load [true]"),
    Flag(name="monitoring_config_file", kind="text",
         help="a MonitoringConfig text proto: Prometheus metrics on the REST port"),
    Flag(name="tensorflow_intra_op_parallelism", kind="int", help="TensorFlow's intra-op threads"),
    Flag(name="tensorflow_inter_op_parallelism", kind="int", help="TensorFlow's inter-op threads"),
    Flag(name="grpc_max_threads", kind="int", unused=_GRPC, help=""),
    Flag(name="grpc_channel_arguments", kind="text", unused=_GRPC, help=""),
    Flag(name="rest_api_num_threads", kind="int", help="",
         unused="modelport's HTTP runs on its event loop, with no thread pool to size"),
    Flag(name="rest_api_timeout_in_ms", kind="int", unused="requests have no deadline", help=""),
    Flag(name="tensorflow_session_parallelism", kind="int",
         unused="use the intra- and inter-op flags", help=""),
    Flag(name="num_request_iterations_for_warmup", kind="int",
         unused="each warm-up record runs once", help=""),
    Flag(name="per_process_gpu_memory_fraction", kind="float",
         unused="TensorFlow's GPU memory is not capped here", help=""),
    Flag(name="saved_model_tags", kind="text", unused="SavedModels load with their serve tag",
         help=""),
    Flag(name="allow_version_labels_for_unavailable_models", kind="bool",
         unused="labels name the versions model.yaml or the config file maps", help=""),
    Flag(name="enable_signature_method_name_check", kind="bool",
         unused="signatures are called by name", help=""),
    Flag(name="xla_cpu_compilation_enabled", kind="bool", unused="XLA is left as it is",
         help=""),
    Flag(name="rest_api_enable_cors_support", kind="bool",
         unused="set cors_origins (MODELPORT_CORS_ORIGINS)", help=""),
)  # fmt: skip


def tensorflow_model_server_settings(
    args: list[str], *, environ: Mapping[str, str] | None = None, config: Path | None = None
) -> UpstreamStart:
    """The Settings of a tensorflow_model_server command line; FlagError (or
    SettingsError, for an unusable file) names what is wrong, HelpAsked for --help."""
    parsed = parse_flags(args, FLAGS, program=PROGRAM)
    base_path = parsed.get("model_base_path")
    config_file = parsed.get("model_config_file")
    if base_path and config_file:
        raise FlagError(
            f"{PROGRAM}: give --model_base_path (one model) or --model_config_file "
            "(several), not both"
        )
    if not base_path and not config_file:
        raise FlagError(
            f"{PROGRAM}: give --model_base_path (one model's folder, with --model_name) or "
            "--model_config_file (a model_config_list)"
        )
    if base_path and "://" in base_path:
        raise FlagError(
            f"{PROGRAM}: --model_base_path={base_path} is a URL; it is a local folder here "
            "(copy a bucket with 'modelport pull URL FOLDER' first)"
        )
    if parsed.get("rest_api_port") == 0:
        raise FlagError(f"{PROGRAM}: --rest_api_port=0: modelport always serves REST; give a port")
    notes = list(parsed.notes)
    if parsed.get("batching_parameters_file") and not parsed.get("enable_batching"):
        notes.append("--batching_parameters_file is read only with --enable_batching")
    name = parsed.get("model_name", DEFAULT_MODEL_NAME)
    flags: dict[str, Any] = {
        # No repository folder: the models are the base path's or the config file's.
        "repository": "",
        "model_folders": (f"{name}={base_path}",) if base_path else (),
        "model_config_file": config_file,
        "model_config_poll_seconds": parsed.get("model_config_file_poll_wait_seconds"),
        "poll_seconds": parsed.get("file_system_poll_wait_seconds"),
        "port": parsed.get("rest_api_port"),
        "grpc_port": parsed.get("port"),
        "enable_batching": parsed.get("enable_batching"),
        "batching_parameters_file": parsed.get("batching_parameters_file"),
        "savedmodel_warmup": parsed.get("enable_model_warmup"),
        "monitoring_config_file": parsed.get("monitoring_config_file"),
        "tensorflow_intra_op_parallelism": parsed.get("tensorflow_intra_op_parallelism"),
        "tensorflow_inter_op_parallelism": parsed.get("tensorflow_inter_op_parallelism"),
    }
    settings = Settings.load(flags, environ, config, defaults=DEFAULTS)
    monitoring = settings.monitoring_config_file
    return UpstreamStart(
        settings, tuple(notes), read_monitoring_path(Path(monitoring)) if monitoring else ""
    )


def tensorflow_model_server_help() -> str:
    return flags_help(PROGRAM, SUMMARY, FLAGS)
