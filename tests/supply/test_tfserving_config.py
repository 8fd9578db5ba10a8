"""TF Serving's files as supply/tfserving_config.py reads them: a model_config_list into
folder models (policy, labels, batching), its errors by file, line and field, the
batching parameters' rules, and a config file read again when it changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelport.core.repositories import FolderModels
from modelport.settings import SettingsError
from modelport.supply.tfserving_config import (
    ModelConfigFile,
    TfBatching,
    read_batching_parameters,
    read_model_config_list,
)

pytestmark = pytest.mark.timeout(30)

CONFIG = """model_config_list {
  config {
    name: "resnet"
    base_path: "/models/resnet"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 3 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 3 }
  }
  config {
    name: "bert" base_path: "/models/bert"
    model_version_policy { latest { num_versions: 2 } }
  }
}
"""


def test_model_config_list(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(CONFIG)
    resnet, bert = read_model_config_list(path, overrides={"max_batch_size": 8})
    assert (resnet.name, resnet.path) == ("resnet", Path("/models/resnet"))
    assert resnet.overrides == {
        "max_batch_size": 8,
        "version_policy": {"specific": [1, 3]},
        "version_labels": {"stable": 1, "canary": 3},
    }
    assert bert.overrides == {"max_batch_size": 8, "version_policy": {"latest": 2}}


NO_FIELD = 'Message type "tensorflow.serving.ModelConfig" has no field named "nme"'
ONE = 'model_config_list { config { name: "a" %s } }'
TWICE = ONE % 'base_path: "/a" } config { name: "a" base_path: "/b"'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'model_config_list {\n  config { nme: "a" }\n}\n',
            f":2:12 (--model_config_file): {NO_FIELD}",
        ),
        (ONE % 'base_path: "/a" model_platform: "onnx"', "'model_platform': 'onnx' is not served"),
        (ONE % "", "model 'a': field 'base_path': required"),
        (ONE % 'base_path: "gs://b/a"', "is a URL"),
        (TWICE, "listed twice"),
    ],
)
def test_model_config_list_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(SettingsError) as raised:
        read_model_config_list(path)
    assert message in str(raised.value)
    assert str(path) in str(raised.value)


def test_batching_parameters(tmp_path: Path) -> None:
    assert read_batching_parameters(None) == TfBatching()  # TF Serving's defaults
    path = tmp_path / "batching.config"
    path.write_text(
        "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 500 }\n"
        "max_enqueued_batches { value: 3 }\nnum_batch_threads { value: 2 }\n"
        "allowed_batch_sizes: 8\nallowed_batch_sizes: 32\n"
    )
    assert read_batching_parameters(path).overrides() == {
        "max_batch_size": 32,
        "batching": {
            "max_queue_delay_us": 500,
            "max_queue_size": 96,
            "preferred_batch_sizes": [8, 32],
        },
        "instances": {"count": 2},
    }
    path.write_text(
        "max_batch_size { value: 32 }\nallowed_batch_sizes: 8\nallowed_batch_sizes: 16\n"
    )
    with pytest.raises(SettingsError, match="end with max_batch_size \\(32\\)"):
        read_batching_parameters(path)


def test_a_polled_config_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "saved_model.pb").write_bytes(b"")
    path = tmp_path / "models.config"
    path.write_text(f'model_config_list {{ config {{ name: "a" base_path: "{tmp_path / "a"}" }} }}')
    config = ModelConfigFile(path, poll_s=1e-9)
    models = FolderModels(config.entries)
    assert models.names() == ["a"]
    path.write_text(f'model_config_list {{ config {{ name: "b" base_path: "{tmp_path / "b"}" }} }}')
    os.utime(path, ns=(1, 1))  # a new stamp, however coarse the file system's clock
    assert models.names() == ["b"]
    assert models.source("b").versions == (1,)
    path.write_text("model_config_list { config { nme: 1 } }")
    os.utime(path, ns=(2, 2))
    assert models.names() == ["b"]  # a broken file keeps the last good list
