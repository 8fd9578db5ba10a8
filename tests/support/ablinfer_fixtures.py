"""Fixtures for the ABLInfer InferServer tests: a busybox image whose ENTRYPOINT acts as a
segmentation model, specs for it, hand-built NIfTI and NRRD volumes, and real servers
(``modelport serve --compat ablinfer=PORT``) on free ports."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.task_fixtures import docker

# The model: prints its arguments and progress lines, copies its -i input to its -o
# output; --fail exits 3 first; --sleep=N ticks N seconds first.
ENTRYPOINT = """\
#!/bin/sh
for a in "$@"; do echo "arg: $a"; done
sleep_s=0
while [ $# -gt 0 ]; do
  case "$1" in
    -i) input="$2"; shift 2;;
    -o) output="$2"; shift 2;;
    --fail) echo "model failed on purpose" >&2; exit 3;;
    --sleep=*) sleep_s="${1#--sleep=}"; shift;;
    *) shift;;
  esac
done
i=1
while [ "$i" -le "$sleep_s" ]; do echo "inference iter $i, sleeping"; sleep 1; i=$((i + 1)); done
echo "inference iter 186, done"
cat "$input" > "$output"
"""


def io_entry(name: str, flag: str, kind: str, status: str = "required") -> dict[str, Any]:
    return {
        "name": name,
        "description": name,
        "status": status,
        "flag": flag,
        "extension": ".nii.gz",
        "type": kind,
    }


def param(kind: str, flag: str, default: Any, **more: Any) -> dict[str, Any]:
    return {
        "name": flag,
        "description": flag,
        "flag": flag,
        "type": kind,
        "default": default,
        **more,
    }


def spec(image: str, ident: str, *, with_enum: bool = True) -> dict[str, Any]:
    """A json_version 1.3 spec for the test image (with an enum param unless told: the
    client's CLI crashes on enums)."""
    name, tag = image.rsplit(":", 1)
    params = {
        "threads": param("int", "--threads=", 4, min=1, max=64),
        "scale": param("float", "--scale=", 1.0),
        "fail": param("bool", "--fail", False),
        "sleep": param("int", "--sleep=", 0, min=0, max=60),
    }
    if with_enum:
        params["mode"] = param("enum", "--mode=", "fast", enum={"Fast": "fast", "Slow": "slow"})
    return {
        "json_version": "1.3",
        "id": ident,
        "type": "docker",
        "name": ident,
        "organ": "Any",
        "task": "Segmentation",
        "status": "Testing",
        "modality": "CT",
        "version": "1.0",
        "docker": {"image_name": name, "image_tag": tag, "data_path": "/tmp/"},
        "inputs": {"input_vol": io_entry("Input Volume", "-i", "volume")},
        "params": params,
        "outputs": {
            "output_seg": io_entry("Output", "-o", "segmentation"),
            "extra": io_entry("Extra", "--extra", "volume", status="optional"),
        },
    }


@pytest.fixture(scope="session")
def ablinfer_image(docker_image: str) -> str:
    """The busybox image with the model script as its ENTRYPOINT (tagged by its hash)."""
    tag = hashlib.sha256(ENTRYPOINT.encode()).hexdigest()[:12]
    image = f"modelport-test/ablinfer:{tag}"
    if docker("image", "inspect", image).returncode == 0:
        return image
    created = docker("create", docker_image, "true")
    assert created.returncode == 0, created.stderr
    container = created.stdout.strip()
    try:
        script = Path(f"/tmp/ablinfer-entrypoint-{os.getpid()}")
        script.write_text(ENTRYPOINT)
        script.chmod(0o755)
        copied = docker("cp", str(script), f"{container}:/bin/segment")
        script.unlink()
        assert copied.returncode == 0, copied.stderr
        committed = docker("commit", "--change", 'ENTRYPOINT ["/bin/segment"]', container, image)
        assert committed.returncode == 0, committed.stderr
    finally:
        docker("rm", "-f", container)
    return image


@pytest.fixture
def spec_folder(tmp_path: Path, ablinfer_image: str) -> Path:
    """Specs: busybox_seg, busybox_plain (no enum), and a broken file."""
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "seg.json").write_text(json.dumps(spec(ablinfer_image, "busybox_seg")))
    plain = spec(ablinfer_image, "busybox_plain", with_enum=False)
    (folder / "plain.JSON").write_text(json.dumps(plain))
    broken = spec(ablinfer_image, "broken")
    del broken["docker"]["data_path"]
    (folder / "broken.json").write_text(json.dumps(broken))
    (folder / "notes.txt").write_text("not a spec")
    return folder


def nifti(size: int = 16, seed: int = 1) -> bytes:
    """A NIfTI-1 volume of size**3 random uint8 voxels, its header built by hand."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, size, size, size, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 2, 8)  # datatype uint8, 8 bits
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    header[344:348] = b"n+1\0"
    voxels = random.Random(seed).randbytes(size**3)
    return bytes(header) + b"\0\0\0\0" + voxels


def nifti_gz(size: int = 16, seed: int = 1) -> bytes:
    return gzip.compress(nifti(size, seed), mtime=0)


def nrrd(size: int = 16, seed: int = 1) -> bytes:
    head = f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {size} {size} {size}\nencoding: raw\n\n"
    return head.encode() + random.Random(seed).randbytes(size**3)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class AblinferServer:
    process: subprocess.Popen[bytes]
    url: str  # with the trailing slash the client forces
    log_path: Path
    main_url: str = ""  # modelport's own port (v2, the page)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no shutdown code runs
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


StartAblinfer = Callable[..., AblinferServer]


@pytest.fixture
def ablinfer_server(tmp_path: Path, spec_folder: Path) -> Iterator[StartAblinfer]:
    """``start(data_dir=..., port=..., **settings)``: a real ``modelport serve`` with the
    ABLInfer listener on ``port``."""
    started: list[AblinferServer] = []
    (tmp_path / "repository").mkdir()

    def start(
        data_dir: Path | None = None, port: int | None = None, **settings: Any
    ) -> AblinferServer:
        port = port or free_port()
        main_port = free_port()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "MODELPORT_REPOSITORY": str(tmp_path / "repository"),
            "MODELPORT_DATA_DIR": str(data_dir or tmp_path / "data"),
            "MODELPORT_ABLINFER_MODELS": str(spec_folder),
            "MODELPORT_TASK_SLOTS": "1",
            **{f"MODELPORT_{k.upper()}": str(v) for k, v in settings.items()},
        }
        log_path = tmp_path / f"ablinfer-{port}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "modelport",
                    "serve",
                    "--port",
                    str(main_port),
                    "--grpc-port",
                    "0",
                    "--compat",
                    f"ablinfer=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        server = AblinferServer(
            process, f"http://127.0.0.1:{port}/", log_path, f"http://127.0.0.1:{main_port}"
        )
        started.append(server)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the server exited: {server.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url, timeout=1).status_code == 200:
                    return server
            time.sleep(0.05)
        pytest.fail(f"the server did not start: {server.log()}")

    yield start
    for server in started:
        server.stop()
