"""Settings: flags > MODELPORT_* environment > modelport.toml > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.settings import EXAMPLES, Settings, SettingsError, tasks_refusal


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "modelport.toml"
    path.write_text('[server]\nport = 7000\nhost = "0.0.0.0"\nlog_level = "debug"\n')
    return path


def test_defaults_without_any_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no modelport.toml here
    settings = Settings.load(environ={})
    assert settings == Settings()
    assert settings.port == 8000 and settings.host == "127.0.0.1"
    assert settings.repository == str(EXAMPLES)


def test_file_over_defaults(toml: Path) -> None:
    settings = Settings.load(environ={}, config=toml)
    assert (settings.port, settings.host, settings.log_level) == (7000, "0.0.0.0", "debug")
    assert settings.log_format == "text"


def test_environment_over_file(toml: Path) -> None:
    settings = Settings.load(environ={"MODELPORT_PORT": "7100"}, config=toml)
    assert settings.port == 7100
    assert settings.host == "0.0.0.0"


def test_flags_over_environment(toml: Path) -> None:
    settings = Settings.load(
        flags={"port": 7200, "host": None},  # None: the flag was not given
        environ={"MODELPORT_PORT": "7100", "MODELPORT_HOST": "10.0.0.1"},
        config=toml,
    )
    assert settings.port == 7200
    assert settings.host == "10.0.0.1"
    assert settings.log_level == "debug"


def test_working_folder_file_is_read(
    toml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.load(environ={}).port == 7000


def test_config_named_by_environment(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text("port = 7300\n")  # a file without a [server] table is read whole
    settings = Settings.load(environ={"MODELPORT_CONFIG": str(other)})
    assert settings.port == 7300


def test_missing_config_flag_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such settings file"):
        Settings.load(environ={}, config=tmp_path / "absent.toml")


def test_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "modelport.toml"
    path.write_text("[server\nport = 1\n")
    with pytest.raises(SettingsError) as info:
        Settings.load(environ={}, config=path)
    assert str(path) in str(info.value)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load(environ={"MODELPORT_PORT": "eighty"}, config=None, flags={})
    assert "port" in str(info.value) and "MODELPORT_PORT" in str(info.value)


def test_bad_flag_value(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.load(flags={"port": 70000}, environ={"MODELPORT_CONFIG": str(tmp_path / "x")})
    assert "port" in str(info.value) and "65535" in str(info.value)
    assert "command line" in str(info.value)


def test_bad_file_value_names_the_file(toml: Path) -> None:
    toml.write_text('[server]\nlog_level = "loud"\n')
    with pytest.raises(SettingsError) as info:
        Settings.load(environ={}, config=toml)
    assert "log_level" in str(info.value) and str(toml) in str(info.value)


def test_unknown_setting_in_file(toml: Path) -> None:
    toml.write_text("[server]\nprot = 1\n")
    with pytest.raises(SettingsError, match="prot"):
        Settings.load(environ={}, config=toml)


def test_unrelated_environment_is_ignored(tmp_path: Path) -> None:
    environ = {"MODELPORT_CONFIG": str(tmp_path / "none.toml"), "MODELPORT_COLOR": "red"}
    assert Settings.load(environ=environ) == Settings()


def test_compat_listeners_from_every_source(tmp_path: Path) -> None:
    env = {"MODELPORT_COMPAT": "inference-server=8123, ablinfer=0.0.0.0:5000"}
    settings = Settings.load(environ=env)
    assert [(c.name, c.host, c.port) for c in settings.compat] == [
        ("inference-server", "", 8123),
        ("ablinfer", "0.0.0.0", 5000),
    ]
    table = tmp_path / "table.toml"
    table.write_text('[server.compat]\ninference-server = 8123\nablinfer = "[::1]:5000"\n')
    from_table = Settings.load(environ={}, config=table).compat
    assert [(c.name, c.host, c.port) for c in from_table] == [
        ("inference-server", "", 8123),
        ("ablinfer", "::1", 5000),
    ]
    flags = {"compat": ["inference-server=127.0.0.2:8123"]}  # --compat, repeated
    [one] = Settings.load(flags=flags, environ={}).compat
    assert (one.host, one.port) == ("127.0.0.2", 8123)
    for bad in ("inference-server", "inference-server=http", "a=1,a=2", "=8123", "a=70000"):
        with pytest.raises(SettingsError, match="MODELPORT_COMPAT"):
            Settings.load(environ={"MODELPORT_COMPAT": bad})


def test_task_calls_on_a_network_address_need_keys_or_tasks_open() -> None:
    assert tasks_refusal(Settings()) == ""
    refused = tasks_refusal(Settings(host="0.0.0.0"))
    assert "0.0.0.0" in refused and "tasks_open" in refused and "--scope tasks" in refused
    assert tasks_refusal(Settings(host="0.0.0.0", tasks_open=True)) == ""
    assert tasks_refusal(Settings(), host="10.1.2.3") != ""  # a listener of its own
    env = {"MODELPORT_COMPAT_OPEN": "inference-server", "MODELPORT_COMPAT_CONTAINER_USER": "image"}
    settings = Settings.load(environ=env)
    assert settings.compat_open == ("inference-server",)
    assert settings.compat_container_user == "image" and settings.compat_container_shm_size == "2g"
    with pytest.raises(SettingsError, match="compat_container_user"):
        Settings.load(environ={"MODELPORT_COMPAT_CONTAINER_USER": "root"})
