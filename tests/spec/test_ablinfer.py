"""ABLInfer specs read as the real ``ablinfer`` client reads them (PyPI's ablinfer is the
yardstick: its ``load_model``, ``normalize_model`` and its flag building)."""

from __future__ import annotations

import copy
import gzip
import json
import logging
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ablinfer.base import DispatchBase
from ablinfer.model.normalize import load_model, normalize_model

from modelport.errors import InvalidInput, SpecError
from modelport.spec.ablinfer import AblinferSpec, load_spec, parse_spec
from modelport.spec.ablinfer_session import (
    SessionPlan,
    container_args,
    convertible,
    filetype_check,
    plan_session,
    sniff_filetype,
)

TEMPORAL_BONE: dict[str, Any] = {
    "json_version": "1.3",
    "id": "temporal_bone_segmentation",
    "type": "docker",
    "name": "ABL Temporal Bone Segmentation",
    "organ": "Ear",
    "task": "Segmentation",
    "status": "In Development",
    "modality": "CT",
    "version": "1.4",
    "description": "Automatically segment the temporal bone.",
    "maintainers": ["Soodeh Nikan (ABL at UWO)", "Ben Connors (ABL at UWO)"],
    "citation": "",
    "website": "https://abl.uwo.ca",
    "docker": {
        "image_name": "uwoabl/temporal-bone-segmentation",
        "image_tag": "latest",
        "data_path": "/tmp",
    },
    "inputs": {
        "input_vol": {
            "name": "Input Volume",
            "description": "Volume to pass to the segmenter.",
            "status": "required",
            "flag": "-i",
            "extension": ".nii.gz",
            "type": "volume",
            "labelmap": False,
            "pre": [],
        }
    },
    "params": {
        "gpus": {
            "name": "GPU Count",
            "description": "GPUs",
            "flag": "--gpus=",
            "type": "int",
            "default": 1,
            "min": 1,
            "max": 16,
        },
        "cuda": {
            "name": "CUDA Devices",
            "description": "devices",
            "flag": "--cuda=",
            "type": "string",
            "default": "",
        },
        "threads": {
            "name": "Thread Count",
            "description": "threads",
            "flag": "--threads=",
            "type": "int",
            "default": 4,
            "min": 1,
            "max": 256,
        },
        "disable_growth": {
            "name": "Disable Growth",
            "description": "growth",
            "flag": "--no-allow-growth",
            "type": "bool",
            "default": False,
        },
        "cpu_resampling": {
            "name": "CPU Resampling",
            "description": "resampling",
            "flag": "--cpu-resampling",
            "type": "bool",
            "default": False,
        },
        "no_island_removal": {
            "name": "No Island Removal",
            "description": "islands",
            "flag": "--no-island-removal",
            "type": "bool",
            "default": False,
        },
    },
    "outputs": {
        "output_seg": {
            "name": "Output Segmentation",
            "description": "Segmentation to put output into.",
            "status": "required",
            "flag": "-o",
            "extension": ".nii.gz",
            "type": "segmentation",
            "colours": {"1": [0.3764, 0.4470, 0.5176], "9": [0.9411, 0.9411, 0.9137, 0.3]},
            "names": {"1": "Sigmoid Sinus", "9": "External Auditory Canal"},
            "master": "input_vol",
            "labelmap": True,
            "post": [
                {
                    "name": "Island Removal",
                    "description": "Remove all islands",
                    "status": "suggested",
                    "locked": True,
                    "operation": "seged",
                    "action": "Islands",
                    "targets": [],
                    "params": {"Operation": "KEEP_LARGEST_ISLAND", "MinimumSize": "1"},
                },
                {
                    "name": "Show in 3D",
                    "description": "Show the result in 3D",
                    "status": "suggested",
                    "locked": False,
                    "operation": "render_3d",
                    "params": {},
                },
            ],
        },
        "input_vol_resampled": {
            "name": "Resampled Input Volume",
            "description": "Resampled volume from the model.",
            "status": "optional",
            "flag": "-r",
            "extension": ".nii.gz",
            "type": "volume",
            "labelmap": False,
            "post": [],
        },
    },
}

# The documentation's kind of spec: json_version 1.0, an order, an enum mapping whose
# keys differ from its values, a float, and a positional ("") flag.
ORDERED_1_0: dict[str, Any] = {
    "json_version": "1.0",
    "type": "docker",
    "name": "Ordered Thing-Model",
    "brief_description": "gone in 1.1",
    "organ": "Brain",
    "task": "Segmentation",
    "status": "Testing",
    "modality": "MR",
    "version": "2",
    "docker": {"image_name": "lab/ordered", "image_tag": "v2", "data_path": "/data/"},
    "inputs": {
        "scan": {
            "name": "Scan",
            "description": "in",
            "flag": "",
            "extension": ".nrrd",
            "type": "volume",
        }
    },
    "params": {
        "colour": {
            "name": "Colour",
            "description": "an enum",
            "flag": "--colour",
            "type": "enum",
            "enum": {"Red": "RED", "Green": "GREEN"},
            "default": "RED",
        },
        "sigma": {
            "name": "Sigma",
            "description": "a float",
            "flag": "--sigma=",
            "type": "float",
            "default": 1,
            "min": 0,
            "max": 10,
        },
        "fast": {
            "name": "Fast",
            "description": "a bool",
            "flag": "--fast",
            "type": "bool",
            "default": True,
        },
        "mode": {
            "name": "Mode",
            "description": "a list enum",
            "flag": "-m",
            "type": "enum",
            "enum": ["a", "b"],
            "default": "a",
        },
    },
    "outputs": {
        "labels": {
            "name": "Labels",
            "description": "out",
            "flag": "",
            "extension": ".nrrd",
            "type": "segmentation",
            "colours": {"1": [1, 0, 0]},
        }
    },
    "order": ["fast", "colour", "sigma", "mode", "scan", "labels"],
}

DEEPINFER: dict[str, Any] = {
    "name": "ProstateSegmenter",
    "organ": "Prostate",
    "version": "0.1",
    "briefdescription": "short",
    "docker": {"dockerhub_repository": "deepinfer/prostate", "digest": "sha256:abc"},
    "members": [
        {"name": "InputVolume", "iotype": "input", "type": "volume", "voltype": "ScalarVolume"},
        {"name": "OutputLabel", "iotype": "output", "type": "volume", "voltype": "LabelMap"},
        {"name": "Iterations", "iotype": "parameter", "type": "uint8_t", "default": 3},
        {"name": "Smooth", "iotype": "parameter", "type": "bool", "default": "false"},
        {"name": "Scale", "iotype": "parameter", "type": "double", "default": "0.5"},
        {"name": "Kind", "iotype": "parameter", "type": "enum", "enum": ["fast", "slow"]},
    ],
}


@pytest.fixture(autouse=True)
def _quiet_ablinfer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)  # the client warns about every optional field


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _theirs(spec: dict[str, Any]) -> Any:
    model, _ = load_model(json.dumps(spec), fp=False)
    return _json(model)


@pytest.mark.parametrize("raw", [TEMPORAL_BONE, ORDERED_1_0], ids=["1.3", "1.0"])
def test_a_spec_is_normalized_as_the_client_normalizes_it(raw: dict[str, Any]) -> None:
    ours = parse_spec(copy.deepcopy(raw), "spec.json").document
    assert _json(ours) == _theirs(raw)
    # What GET /models/{id} serves passes the client's own normalize_model.
    normalize_model(_json(ours))


def test_a_deepinfer_spec_is_updated_as_the_client_updates_it() -> None:
    ours = _json(parse_spec(copy.deepcopy(DEEPINFER), "old.json").document)
    theirs = _theirs(DEEPINFER)
    # The client's update builds each DeepInfer parameter and then drops it (it never
    # adds it to ``params``); modelport keeps them, so the model can still be tuned.
    assert {k: v for k, v in ours.items() if k != "params"} == {
        k: v for k, v in theirs.items() if k != "params"
    }
    assert theirs["params"] == {}
    assert ours["params"]["Iterations"] == {
        "name": "Iterations",
        "description": "",
        "flag": "--Iterations",
        "type": "int",
        "default": 3,
        "min": 0,
        "max": 255,
    }
    assert ours["params"]["Smooth"]["default"] is True  # DeepInfer's "false" -> True, sic
    assert ours["params"]["Kind"]["enum"] == {"fast": "fast", "slow": "slow"}
    normalize_model(ours)
    assert ours["docker"]["data_path"] == "/home/deepinfer/data"
    assert ours["id"] == "prostatesegmenter"


def test_a_1_1_name_that_is_no_identifier_gets_the_clients_hashed_id() -> None:
    raw = {**copy.deepcopy(ORDERED_1_0), "json_version": "1.1", "name": "3D model!"}
    assert parse_spec(copy.deepcopy(raw), "x.json").id == _theirs(raw)["id"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("docker"), "docker"),
        (lambda d: d["docker"].pop("data_path"), "docker/data_path"),
        (lambda d: d.update(json_version="1.9"), "json_version"),
        (lambda d: d.update(json_version="one"), "json_version"),
        (lambda d: d.update(id="not an id"), "id"),
        (lambda d: d["params"]["gpus"].update(type="complex"), "params/gpus/type"),
        (lambda d: d["params"]["gpus"].update(default="many"), "params/gpus/default"),
        (lambda d: d["inputs"]["input_vol"].update(status="maybe"), "inputs/input_vol/status"),
        (lambda d: d["inputs"]["input_vol"].update(flag=""), "order"),
        (lambda d: d.update(order=["gpus"]), "order"),
        (
            lambda d: d["outputs"]["output_seg"]["colours"].update({"2": [2, 0, 0]}),
            "outputs/output_seg/colours/2",
        ),
        (lambda d: d["params"].update(input_vol=d["params"]["gpus"]), "params/input_vol"),
    ],
)
def test_a_broken_spec_names_the_file_and_the_field(change: Any, field: str) -> None:
    raw = copy.deepcopy(TEMPORAL_BONE)
    change(raw)
    with pytest.raises(SpecError) as caught:
        parse_spec(raw, "ABLTempSeg.json")
    assert caught.value.message.startswith(f"ABLTempSeg.json: {field}: ")


def test_a_file_that_is_not_json_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SpecError, match=r"^bad\.json: not a readable JSON file"):
        load_spec(tmp_path / "bad.json")


def _their_flags(spec: AblinferSpec, plan: SessionPlan) -> list[str]:
    """The client library's own flag building, on the same choices."""
    model = _theirs(spec.document)
    config = {
        "params": {k: {"value": v} for k, v in plan.params.items()},
        **{
            section: {k: {"enabled": plan.enabled[k]} for k in model[section]}
            for section in ("inputs", "outputs")
        },
    }
    owner = SimpleNamespace(model=model, model_config=config)
    fmap = DispatchBase._make_fmap_helper(owner, spec.document["docker"]["data_path"])  # type: ignore[arg-type]
    return list(DispatchBase._make_flags(owner, fmap))  # type: ignore[arg-type]


def test_arguments_are_built_as_the_client_library_builds_them() -> None:
    spec = parse_spec(copy.deepcopy(TEMPORAL_BONE), "t.json")
    body = {
        "params": {"cpu_resampling": {"value": True}, "gpus": {"value": 1}},
        "inputs": {"input_vol": {"enabled": True}},
        "outputs": {"output_seg": {"enabled": True}, "input_vol_resampled": {"enabled": False}},
    }
    plan = plan_session(spec, body)
    args = container_args(spec, plan)
    assert args == [
        "--cpu-resampling",
        "--cuda=",
        "--gpus=1",
        "-i",
        "/tmp/input_vol.nii.gz",
        "-o",
        "/tmp/output_seg.nii.gz",
        "--threads=4",
    ]
    assert args == _their_flags(spec, plan)


def test_order_positional_flags_floats_and_enums_follow_the_client() -> None:
    spec = parse_spec(copy.deepcopy(ORDERED_1_0), "o.json")
    # The client sends the enum's value; upstream's server looked up a key: both work.
    for colour in ("GREEN", "Green"):
        body = {
            "params": {
                "colour": {"value": colour},
                "sigma": {"value": 2},
                "fast": {"value": False},
            },
            "inputs": {"scan": {"enabled": True}},
            "outputs": {"labels": {"enabled": True}},
        }
        plan = plan_session(spec, body)
        args = container_args(spec, plan)
        assert args == [
            "--colour",
            "GREEN",
            "--sigma=2.0",
            "-m",
            "a",
            "/data/scan.nrrd",
            "/data/labels.nrrd",
        ]
        assert args == _their_flags(spec, plan)


def test_an_empty_order_gives_no_arguments_as_upstream() -> None:
    raw = copy.deepcopy(TEMPORAL_BONE)
    raw["order"] = []
    spec = parse_spec(raw, "t.json")
    plan = plan_session(spec, {"params": {}})
    assert container_args(spec, plan) == [] == _their_flags(spec, plan)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "Must pass the model parameters as JSON"),
        ({}, "Missing section params"),
        ({"params": {"gpus": 3}}, "Improper formatting for params/gpus"),
        ({"params": {"gpus": {}}}, "Invalid value for params/gpus"),
        ({"params": {"gpus": {"value": 17}}}, "Invalid value for params/gpus: 17 is not between"),
        ({"params": {"gpus": {"value": "²"}}}, "Invalid value for params/gpus"),
        ({"params": {"gpus": {"value": 1.5}}}, "Invalid value for params/gpus"),
        ({"params": {"gpus": {"value": True}}}, "Invalid value for params/gpus"),
        ({"params": {}, "inputs": {"nope": {"enabled": True}}}, "Unknown input nope"),
        (
            {"params": {}, "outputs": {"output_seg": {"enabled": False}}},
            "Output output_seg cannot be disabled",
        ),
    ],
)
def test_a_bad_session_request_is_invalid_input(body: Any, message: str) -> None:
    spec = parse_spec(copy.deepcopy(TEMPORAL_BONE), "t.json")
    with pytest.raises(InvalidInput) as caught:
        plan_session(spec, body)
    assert caught.value.message.startswith(message)


def test_an_enum_value_outside_the_spec_is_refused() -> None:
    spec = parse_spec(copy.deepcopy(ORDERED_1_0), "o.json")
    with pytest.raises(InvalidInput, match="params/colour"):
        plan_session(spec, {"params": {"colour": {"value": "BLUE"}}})


def _nifti_header() -> bytes:
    header = bytearray(384)
    header[0:4] = struct.pack("<i", 348)
    header[344:348] = b"n+1\0"
    return bytes(header)


def test_file_types_are_sniffed_from_the_first_bytes() -> None:
    nifti = _nifti_header() + b"\0" * 640
    assert sniff_filetype(nifti[:1024]) == ".nii"
    assert sniff_filetype(gzip.compress(nifti)[:1024]) == ".nii.gz"
    assert sniff_filetype(b"NRRD0004\ntype: float\n") == ".nrrd"
    assert sniff_filetype(gzip.compress(b"NRRD0004\n" + b"x" * 500)[:1024]) == ".nrrd.gz"
    assert sniff_filetype(gzip.compress(b"hello" * 200)[:1024]) is None
    assert sniff_filetype(b"\x1f\x8bnot really gzip") == ".gz"
    assert sniff_filetype(b"plain text") is None


def test_acceptable_and_convertible_follow_upstream() -> None:
    assert filetype_check(".nii.gz", ".nii.gz", can_convert=False)
    assert filetype_check(".NII.GZ", ".nii.gz", can_convert=False)
    assert not filetype_check(".nii.gz", ".nrrd", can_convert=False)
    assert filetype_check(".nii.gz", ".nrrd", can_convert=True)
    assert filetype_check(".fcsv", None, can_convert=False)  # not a volume type: anything
    assert convertible(".nii.gz", ".nrrd")
    assert not convertible(".nii.gz", None)
    assert not convertible(".nii.gz", ".nii.gz")
    assert not convertible(".fcsv", ".nrrd")
