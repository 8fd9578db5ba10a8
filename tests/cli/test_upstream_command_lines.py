"""``modelport tritonserver`` and ``modelport tensorflow_model_server`` read their upstream
server's command line: the defaults (read from the parsed settings, with no environment
and no modelport.toml), both flag forms, booleans, unknown and unused flags, and the
errors that name what is wrong. The servers these start are tested in
test_tritonserver_command.py and test_tensorflow_model_server_command.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelport.cli.tensorflow_model_server import tensorflow_model_server_settings
from modelport.cli.tritonserver import tritonserver_settings
from modelport.cli.upstream_flags import FlagError, HelpAsked
from modelport.settings import SettingsError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def no_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no modelport.toml is read


def triton(*args: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return tritonserver_settings(list(args), environ=environ or {})


def tfs(*args: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return tensorflow_model_server_settings(list(args), environ=environ or {})


def test_tritonserver_defaults_are_tritons() -> None:
    start = triton("--model-repository=/models")
    s = start.settings
    assert (s.host, s.port, s.grpc_port, s.metrics_port) == ("0.0.0.0", 8000, 8001, 8002)
    assert s.repository == "/models" and s.extra_repositories == ()
    assert s.startup_models == ("*",) and s.poll_seconds == 0 and s.exit_on_error is True
    assert start.notes == ()


def test_tritonserver_flags_both_forms_and_repeated_repositories() -> None:
    s = triton(
        "--model-repository", "/a", "--model-repository=/b", "--model-store", "/c",
        "--http-port=9000", "--grpc-port", "9001", "--metrics-port=9002",
        "--model-control-mode", "explicit", "--load-model=x", "--load-model", "y",
        "--exit-on-error", "false", "--log-verbose=1",
    ).settings  # fmt: skip
    assert (s.repository, s.extra_repositories) == ("/a", ("/b", "/c"))
    assert (s.port, s.grpc_port, s.metrics_port) == (9000, 9001, 9002)
    assert s.startup_models == ("x", "y") and s.exit_on_error is False
    assert s.log_level == "debug"


def test_tritonserver_model_control_modes() -> None:
    poll = triton("--model-repository=/m", "--model-control-mode=poll").settings
    assert poll.poll_seconds == 15 and poll.startup_models == ("*",)
    every = triton(
        "--model-repository=/m", "--model-control-mode=poll", "--repository-poll-secs=3"
    ).settings
    assert every.poll_seconds == 3
    nothing = triton("--model-repository=/m", "--model-control-mode=explicit").settings
    assert nothing.startup_models == () and nothing.poll_seconds == 0
    with pytest.raises(FlagError, match="--model-control-mode=lazy: expected one of"):
        triton("--model-repository=/m", "--model-control-mode=lazy")
    with pytest.raises(FlagError, match="--load-model needs --model-control-mode=explicit"):
        triton("--model-repository=/m", "--load-model=x")


def test_tritonserver_environment_beats_its_defaults_and_flags_beat_both() -> None:
    environ = {"MODELPORT_HOST": "127.0.0.1", "MODELPORT_PORT": "7000"}
    s = triton("--model-repository=/m", "--grpc-port=7001", environ=environ).settings
    assert (s.host, s.port, s.grpc_port, s.metrics_port) == ("127.0.0.1", 7000, 7001, 8002)
    s = triton("--model-repository=/m", "--http-port=7100", environ=environ).settings
    assert s.port == 7100


def test_tritonserver_switches_and_addresses() -> None:
    s = triton(
        "--model-repository=/m", "--allow-grpc=false", "--allow-metrics", "false",
        "--http-address=10.0.0.5", "--grpc-address=10.0.0.5",
    ).settings  # fmt: skip
    assert (s.grpc_port, s.metrics_port, s.host) == (0, 0, "10.0.0.5")
    with pytest.raises(FlagError, match="differ"):
        triton("--model-repository=/m", "--http-address=a", "--grpc-address=b")
    with pytest.raises(FlagError, match="always serves HTTP"):
        triton("--model-repository=/m", "--allow-http=false")


def test_tritonserver_unused_flags_are_noted_once() -> None:
    start = triton(
        "--model-repository=/m", "--strict-model-config=false", "--strict-model-config", "true",
        "--backend-config=onnxruntime,x=1", "--backend-config", "python,y=2",
    )  # fmt: skip
    assert len(start.notes) == 2
    assert start.notes[0].startswith("--strict-model-config is accepted and has no effect")


def test_tritonserver_refusals_name_the_flag() -> None:
    with pytest.raises(FlagError, match="--model-repository is required"):
        triton()
    with pytest.raises(FlagError, match="unknown flag --model-repo;"):
        triton("--model-repo=/m")
    with pytest.raises(FlagError, match="--http-port=eighty: expected an integer"):
        triton("--model-repository=/m", "--http-port=eighty")
    with pytest.raises(FlagError, match="--grpc-port needs a value"):
        triton("--model-repository=/m", "--grpc-port")
    with pytest.raises(FlagError, match="--exit-on-error=maybe: expected true or false"):
        triton("--model-repository=/m", "--exit-on-error=maybe")
    with pytest.raises(FlagError, match="unexpected argument '/m'"):
        triton("/m")
    with pytest.raises(HelpAsked):
        triton("--help")


def test_tensorflow_model_server_defaults_are_tf_servings() -> None:
    start = tfs("--model_base_path=/models/resnet")
    s = start.settings
    assert (s.host, s.grpc_port, s.port) == ("0.0.0.0", 8500, 8501)
    assert s.repository == "" and s.model_folders == ("default=/models/resnet",)
    assert s.poll_seconds == 1 and s.model_config_poll_seconds == 0
    assert s.enable_batching is False and s.savedmodel_warmup is True
    assert (s.tensorflow_intra_op_parallelism, s.tensorflow_inter_op_parallelism) == (0, 0)
    assert s.metrics_port == 0 and start.monitoring == ""


def test_tensorflow_model_server_flags_and_booleans() -> None:
    s = tfs(
        "--port", "9500", "--rest_api_port=9501", "--model_name=resnet",
        "--model_base_path", "/models/resnet", "--enable_batching",
        "--enable_model_warmup=false", "--tensorflow_intra_op_parallelism=4",
        "--file_system_poll_wait_seconds", "0",
    ).settings  # fmt: skip
    assert (s.grpc_port, s.port, s.model_folders) == (9500, 9501, ("resnet=/models/resnet",))
    assert s.enable_batching is True and s.savedmodel_warmup is False
    assert s.tensorflow_intra_op_parallelism == 4 and s.poll_seconds == 0
    assert tfs("--model_base_path=/m", "--enable_batching=false").settings.enable_batching is False
    assert tfs("--model_base_path=/m", "--enable_batching", "true").settings.enable_batching
    # A single dash, as TF Serving's parser also takes.
    assert tfs("-model_base_path=/m", "-port=9600").settings.grpc_port == 9600


def test_tensorflow_model_server_grpc_max_threads_is_noted_once() -> None:
    start = tfs("--model_base_path=/m", "--grpc_max_threads=8", "--grpc_max_threads", "16")
    assert start.notes == (
        "--grpc_max_threads is accepted and has no effect here: modelport's gRPC runs on its "
        "event loop, with no thread pool to size",
    )


def test_tensorflow_model_server_refusals(tmp_path: Path) -> None:
    with pytest.raises(FlagError, match="unknown flag --model_dir;"):
        tfs("--model_dir=/m")
    with pytest.raises(FlagError, match="give --model_base_path"):
        tfs("--port=8500")
    with pytest.raises(FlagError, match="not both"):
        tfs("--model_base_path=/m", "--model_config_file=/c")
    with pytest.raises(FlagError, match="is a URL"):
        tfs("--model_base_path=s3://bucket/m")
    with pytest.raises(FlagError, match="--rest_api_port=0"):
        tfs("--model_base_path=/m", "--rest_api_port=0")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config {\n  enable: true\n  pathh: '/m'\n}\n")
    with pytest.raises(SettingsError) as raised:
        tfs("--model_base_path=/m", f"--monitoring_config_file={monitoring}")
    assert f"{monitoring}:3:3 (--monitoring_config_file)" in str(raised.value)
    assert 'no field named "pathh"' in str(raised.value)


def test_tensorflow_model_server_monitoring_path(tmp_path: Path) -> None:
    on = tmp_path / "on.config"
    on.write_text("prometheus_config { enable: true }\n")
    assert tfs("--model_base_path=/m", f"--monitoring_config_file={on}").monitoring == (
        "/monitoring/prometheus/metrics"
    )
    off = tmp_path / "off.config"
    off.write_text('prometheus_config { enable: false, path: "/metrics/tf" }\n')
    assert tfs("--model_base_path=/m", f"--monitoring_config_file={off}").monitoring == ""


@pytest.mark.parametrize(
    ("command", "flag"),
    [("tritonserver", "--model-repo=/m"), ("tensorflow_model_server", "--bogus_flag=1")],
)
def test_an_unknown_flag_stops_the_command(command: str, flag: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelport", command, flag],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 2
    assert f"unknown flag {flag.split('=')[0]};" in done.stderr
    assert f"modelport {command} --help" in done.stderr
