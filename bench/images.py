"""The pictures benchmark: models with ``codec: image`` inputs served to a compiled load
generator, against the same model's in-process pipeline and against the Redis-queue
stack the detector-server team runs. One command, numbers printed, nothing asserted.

    .venv/bin/python bench/images.py [--duration 5] [--repeats 3] [--quick]

Builds the pictures (the bundled astronaut photo as a 1920x1080 JPEG of ~1.8 MB, a
1280x720 JPEG and a 640x480 PNG) and a model repository: ``classifier`` (an ONNX
classifier, fixed seed, FP32 3x224x224 input with ``codec: image``), the bundled
``text-detector`` and ``face-detector`` (python pipelines that decode the file
themselves), and ``digits`` (~1 ms), the probe's model. Then, per model and picture:

- in process: decode + resize + run in a tight loop, one thread per core side by side
  (each with its own session or model object), and one thread with the model's own
  settings; *best* is the higher;
- served: ``modelport serve`` on a free loopback port, wrk posting the picture as a
  multipart form (a Lua script) to ``/api/models/<m>/predict`` at c = 1, 4, 16, while a
  probe thread infers ``digits`` every 20 ms and records its latency;
- the peer (detectors, c = 1 and 16): ``bench/peers/redis_queue`` (a FastAPI app that
  queues each picture on Redis and polls for the result every 0.25 s, and one worker
  process per model running the same detector), with redis-server, all started here;
  wrk posts the same form to its ``/predictor/`` and to modelport's.

See bench/README.md ("Pictures") for what each number means and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    HOST,
    CpuMeter,
    free_port,
    git_commit,
    http,
    machine,
    process_tree,
    wrk_summary,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "src" / "modelport" / "examples"
PEER = Path(__file__).resolve().parent / "peers" / "redis_queue"
READY_TIMEOUT_S = 120.0
SEED = 18
BOUNDARY = "modelport-bench-boundary"
PROBE_EVERY_S = 0.02
DETECTORS = ("text-detector", "face-detector")

# wrk: the body is a prepared multipart form; done() adds one machine-readable line.
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. os.getenv("BENCH_BOUNDARY")
wrk.body = io.open(os.getenv("BENCH_BODY"), "rb"):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %.1f %.1f %.1f %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""

CLASSIFIER_YAML = """\
# An ONNX classifier (bench/images.py, seed {seed}): a picture in, 1000 scores out.
runtime: onnx
max_batch_size: 16
inputs:
  - name: image
    datatype: FP32
    shape: [3, 224, 224]
    codec: image
    image: {{layout: CHW, scale: 0.00392156862745098, mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225]}}
outputs:
  - {{name: scores, datatype: FP32, shape: [1000], codec: classification}}
"""


# -- pictures and models ---------------------------------------------------------------------


def build_pictures(folder: Path) -> dict[str, Path]:
    """The astronaut sample as camera-sized files: grain added, so they compress as photos."""
    source = Image.open(EXAMPLES / "face-detector" / "samples" / "astronaut.jpg").convert("RGB")
    rng = np.random.default_rng(SEED)
    made: dict[str, Path] = {}
    for name, size, grain, save in (
        ("photo-1080.jpg", (1920, 1080), 8, {"quality": 95, "subsampling": 0}),
        ("photo-720.jpg", (1280, 720), 4, {"quality": 90}),
        ("photo-480.png", (640, 480), 2, {}),
    ):
        pixels = np.asarray(source.resize(size, Image.Resampling.BICUBIC), np.int16)
        pixels = pixels + rng.normal(0, grain, pixels.shape).astype(np.int16)
        path = folder / name
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, **save)
        made[name] = path
    return made


def classifier_graph() -> onnx.ModelProto:
    """Two strided convolutions, global pooling and a dense layer, weights from SEED."""
    rng = np.random.default_rng(SEED)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        values = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        return numpy_helper.from_array(values, name)

    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], strides=[4, 4], pads=[3] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    initializers = [
        weight("w1", 32, 3, 7, 7),
        numpy_helper.from_array(np.zeros(32, np.float32), "b1"),
        weight("w2", 64, 32, 3, 3),
        numpy_helper.from_array(np.zeros(64, np.float32), "b2"),
        weight("w3", 1000, 64),
        numpy_helper.from_array(np.zeros(1000, np.float32), "b3"),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1000])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def build_repository(root: Path) -> Path:
    for name in (*DETECTORS, "digits"):
        shutil.copytree(EXAMPLES / name, root / name, ignore=shutil.ignore_patterns("samples"))
    folder = root / "classifier" / "1"
    folder.mkdir(parents=True)
    onnx.save(classifier_graph(), folder / "model.onnx")
    (root / "classifier" / "model.yaml").write_text(CLASSIFIER_YAML.format(seed=SEED))
    return root


# -- in process ------------------------------------------------------------------------------


def cores() -> int:
    return len(os.sched_getaffinity(0))


def side_by_side(make: Callable[[], Callable[[], object]], threads: int, seconds: float) -> float:
    """Calls per second of ``threads`` threads each calling its own ``make()`` in a loop."""
    calls = [make() for _ in range(threads)]
    for call in calls:
        call()  # warm
    counts = [0] * threads
    start = time.perf_counter()
    stop = start + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            calls[i]()
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - start)


def classifier_pipeline(repo: Path, data: bytes, intra_op: int) -> Callable[[], object]:
    """Decode + resize + normalise (the server's own codec) + session.run, one picture."""
    import onnxruntime as ort

    from modelport.codecs.image import encode_image_input
    from modelport.spec import parse_spec

    spec = parse_spec("classifier", (repo / "classifier" / "model.yaml").read_text(), "x")
    (tensor,) = spec.inputs
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    path = str(repo / "classifier" / "1" / "model.onnx")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def one() -> object:
        array, _ = encode_image_input(data, tensor)
        return session.run(None, {"image": array[np.newaxis]})

    return one


def detector_pipeline(repo: Path, name: str, data: bytes, intra_op: int) -> Callable[[], object]:
    """The example's own Model.detect (decode, resize, run, post-process), one picture."""
    import importlib.util

    from modelport.spec import parse_spec

    folder = repo / name
    spec = parse_spec(name, (folder / "model.yaml").read_text(), "x")
    spec = spec.model_copy(
        update={"threads": spec.threads.model_copy(update={"intra_op": intra_op})}
    )
    module_spec = importlib.util.spec_from_file_location(f"bench_{name}", folder / "1" / "model.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    model = module.Model()
    model.setup(types.SimpleNamespace(spec=spec, version_dir=folder / "1", model_dir=folder))
    return lambda: model.detect(data)


def in_process(
    repo: Path, model: str, data: bytes, seconds: float, repeats: int
) -> dict[str, float]:
    """Pictures/s of the in-process pipeline: one thread per core (each its own copy,
    one intra-op thread) and one thread with the model's own settings; medians."""
    own_intra = 2 if model == "text-detector" else 1

    def make(intra: int) -> Callable[[], Callable[[], object]]:
        if model == "classifier":
            return lambda: classifier_pipeline(repo, data, intra)
        return lambda: detector_pipeline(repo, model, data, intra)

    found = {
        f"{cores()} threads x 1": statistics.median(
            side_by_side(make(1), cores(), seconds) for _ in range(repeats)
        ),
        f"1 thread x {own_intra}": statistics.median(
            side_by_side(make(own_intra), 1, seconds) for _ in range(repeats)
        ),
    }
    return found


# -- servers ---------------------------------------------------------------------------------


@contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> Iterator[int]:
    """A subprocess with its output in ``log``, stopped (TERM, then KILL) at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def environment() -> dict[str, str]:
    """This checkout's modelport first on the path (the venv may hold another's)."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@contextmanager
def modelport(repo: Path, logs: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    cmd = [sys.executable, "-m", "modelport", "serve", str(repo), "--host", HOST]
    cmd += ["--port", str(port), "--grpc-port", "0"]
    log = logs / "modelport.log"
    with process(cmd, log, environment(), repo) as pid:
        base = f"http://{HOST}:{port}"
        proc_wait(base + "/v2/health/ready", pid, log)
        yield base, pid


def proc_wait(url: str, pid: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if http(url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready; see {log}")


@contextmanager
def redis_queue_peer(repo: Path, logs: Path) -> Iterator[tuple[str, list[int]]]:
    """redis-server, the peer's FastAPI app (uvicorn, one process) and a worker per
    detector; yields the app's base url and every pid (for the CPU meter)."""
    redis_port, app_port = free_port(), free_port()
    env = {**environment(), "REDIS_URL": f"redis://{HOST}:{redis_port}/0"}
    data = logs / "redis"
    data.mkdir()
    with ExitStack() as stack:
        redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", HOST]
        redis_cmd += ["--save", "", "--appendonly", "no", "--dir", str(data)]
        pids = [stack.enter_context(process(redis_cmd, logs / "redis.log", env, data))]
        for name in DETECTORS:
            worker = [sys.executable, str(PEER / "worker.py"), str(repo / name)]
            pids.append(stack.enter_context(process(worker, logs / f"{name}.log", env, ROOT)))
        app = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(PEER)]
        app += ["--host", HOST, "--port", str(app_port), "--log-level", "warning"]
        pids.append(stack.enter_context(process(app, logs / "peer-app.log", env, ROOT)))
        base = f"http://{HOST}:{app_port}"
        proc_wait(base + "/openapi.json", pids[-1], logs / "peer-app.log")
        for name in DETECTORS:  # the workers load their models
            log = logs / f"{name}.log"
            deadline = time.monotonic() + READY_TIMEOUT_S
            while b"ready" not in log.read_bytes():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {name} worker is not ready; see {log}")
                time.sleep(0.1)
        yield base, pids


# -- load ------------------------------------------------------------------------------------


def form(picture: Path, fields: dict[str, str]) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    kind = "image/png" if picture.suffix == ".png" else "image/jpeg"
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{picture.name}"\r\nContent-Type: {kind}\r\n\r\n'.encode()
        + picture.read_bytes()
        + b"\r\n"
    )
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post_form(url: str, body: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    conn = HTTPConnection(host, int(port), timeout=120)
    try:
        path = "/" + url.removeprefix("http://").split("/", 1)[1]
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        conn.request("POST", path, body, headers)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


class Probe:
    """Infers ``digits`` every 20 ms on one keep-alive connection; latencies in ms."""

    BODY = json.dumps(
        {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [8.0] * 64}]}
    ).encode()

    def __init__(self, base: str) -> None:
        self.base = base
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        host, port = self.base.removeprefix("http://").split(":")
        conn = HTTPConnection(host, int(port), timeout=30)
        headers = {"Content-Type": "application/json"}
        next_at = time.perf_counter()
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                conn.request("POST", "/v2/models/digits/infer", self.BODY, headers)
                answer = conn.getresponse()
                answer.read()
                ok = answer.status == 200
            except OSError:
                ok = False
                conn.close()
            if ok:
                self.latencies.append((time.perf_counter() - start) * 1000)
            else:
                self.failures += 1
            next_at += PROBE_EVERY_S
            self._stop.wait(max(0.0, next_at - time.perf_counter()))
        conn.close()

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return float(np.percentile(self.latencies, q))


class ProcessesMeter(CpuMeter):
    """:class:`CpuMeter` for a server made of several process trees (the peer's)."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(pids[0])
        self.more = pids[1:]

    def _ours_s(self) -> float:
        total = super()._ours_s()
        for pid in (p for root in self.more for p in process_tree(root)):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(stat[11]) + int(stat[12])) / self.TICK
            except (OSError, IndexError, ValueError):
                pass
        return total


@dataclass(frozen=True, slots=True)
class Point:
    pictures_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    other_cpu: float
    probe_p50_ms: float = float("nan")
    probe_p99_ms: float = float("nan")


def wrk(
    url: str, body: Path, script: Path, connections: int, seconds: float, pids: list[int]
) -> Point:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "30s"]
    cmd += ["--latency", "-s", str(script), url]
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_BOUNDARY": BOUNDARY}
    with ProcessesMeter(pids) as meter:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=seconds + 90, check=False
        )
    return Point(*wrk_summary(done), meter.other)


def measure(
    url: str,
    body: Path,
    script: Path,
    *,
    connections: int,
    seconds: float,
    repeats: int,
    pids: list[int],
    probe_base: str | None,
) -> tuple[Point, list[float]]:
    """Medians over ``repeats`` wrk runs (and the probe's, when there is one)."""
    runs: list[Point] = []
    for _ in range(repeats):
        with ExitStack() as stack:
            probe = stack.enter_context(Probe(probe_base)) if probe_base else None
            run = wrk(url, body, script, connections, seconds, pids)
        if probe is not None:
            run = Point(
                run.pictures_per_s,
                run.p50_ms,
                run.p99_ms,
                run.errors + probe.failures,
                run.other_cpu,
                probe.percentile(50),
                probe.percentile(99),
            )
        runs.append(run)
    rates = [r.pictures_per_s for r in runs]
    point = Point(
        statistics.median(rates),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.errors for r in runs),
        max(r.other_cpu for r in runs),
        statistics.median(r.probe_p50_ms for r in runs),
        statistics.median(r.probe_p99_ms for r in runs),
    )
    return point, rates


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--peer-concurrency", default="1,16")
    parser.add_argument("--models", default="classifier,text-detector,face-detector")
    parser.add_argument("--pictures", default="", help="names to keep (default: all)")
    parser.add_argument(
        "--detector-duration",
        type=float,
        default=10.0,
        help="seconds per wrk run for the detectors (a second or so a picture)",
    )
    parser.add_argument("--no-inprocess", action="store_true")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 x 3 s per point")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats, args.detector_duration = 3.0, 1, 6.0
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    if not args.no_peer and shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed; --no-peer skips the peer")
    levels = [int(c) for c in args.concurrency.split(",")]
    peer_levels = [int(c) for c in args.peer_concurrency.split(",")]
    models = args.models.split(",")
    sys.path.insert(0, str(ROOT / "src"))

    temp = Path(tempfile.mkdtemp(prefix="modelport-images-"))
    try:
        repo = build_repository(temp / "models")
        pictures = build_pictures(temp)
        if args.pictures:
            pictures = {k: v for k, v in pictures.items() if k in args.pictures.split(",")}
        script = temp / "form.lua"
        script.write_text(WRK_SCRIPT)
        load = os.getloadavg()
        print(f"machine: {machine()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"commit: {git_commit()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"{args.repeats} x {args.duration:g} s per point, medians; wrk -t1")
        for name, path in pictures.items():
            with Image.open(path) as opened:
                print(f"  {name}: {opened.width}x{opened.height}, {path.stat().st_size:,} bytes")

        best: dict[tuple[str, str], float] = {}
        if not args.no_inprocess:
            print("\nin process (decode + resize + run), pictures/s, medians")
            for model in models:
                for name, path in pictures.items():
                    seconds = args.detector_duration if model in DETECTORS else args.duration
                    found = in_process(repo, model, path.read_bytes(), seconds, args.repeats)
                    best[(model, name)] = max(found.values())
                    shown = ", ".join(f"{k}: {v:.1f}" for k, v in found.items())
                    print(f"  {model:14} {name:15} {shown}")

        print("\nserved by modelport: pictures/s (runs), p50/p99 ms, probe (digits) p50/p99 ms")
        ours: dict[tuple[str, str, int], Point] = {}
        with modelport(repo, temp) as (base, pid):
            with Probe(base) as alone:
                time.sleep(min(args.duration, 5.0))
            print(
                f"  probe alone: p50 {alone.percentile(50):.2f} ms, "
                f"p99 {alone.percentile(99):.2f} ms"
            )
            for model in models:
                for name, path in pictures.items():
                    body = temp / f"{model}-{name}.form"
                    body.write_bytes(form(path, {}))
                    url = f"{base}/api/models/{model}/predict"
                    status, answer = post_form(url, body.read_bytes())
                    if status != 200:
                        raise RuntimeError(f"{model} answered {status}: {answer[:300]!r}")
                    seconds = args.detector_duration if model in DETECTORS else args.duration
                    for c in levels:
                        point, rates = measure(
                            url, body, script, connections=c, seconds=seconds,
                            repeats=args.repeats, pids=[pid], probe_base=base,
                        )  # fmt: skip
                        ours[(model, name, c)] = point
                        of = best.get((model, name))
                        share = f", {point.pictures_per_s / of:.0%} of in-process" if of else ""
                        print(
                            f"  {model:14} {name:15} c={c:<3} {point.pictures_per_s:7.1f}/s "
                            f"({', '.join(f'{r:.1f}' for r in rates)}){share}, "
                            f"p50 {point.p50_ms:.1f} p99 {point.p99_ms:.1f}, probe "
                            f"{point.probe_p50_ms:.2f}/{point.probe_p99_ms:.2f}, "
                            f"errors {point.errors}, other cpu {point.other_cpu:.2f}"
                        )
            detectors = [m for m in models if m in DETECTORS]
            if args.no_peer or not detectors:
                return
            print("\n/predictor/: modelport vs the Redis-queue peer, pictures/s and p50 ms")
            peer_points: dict[tuple[str, str, int], Point] = {}
            for model in detectors:
                for name, path in pictures.items():
                    body = temp / f"predictor-{model}-{name}.form"
                    body.write_bytes(form(path, {"model_type": model}))
                    for c in peer_levels:
                        point, _ = measure(
                            f"{base}/predictor/", body, script, connections=c,
                            seconds=args.detector_duration, repeats=args.repeats, pids=[pid],
                            probe_base=None,
                        )  # fmt: skip
                        peer_points[(model, name, c)] = point
        with redis_queue_peer(repo, temp) as (peer_base, pids):
            for (model, name, c), point in peer_points.items():
                body = temp / f"predictor-{model}-{name}.form"
                status, answer = post_form(f"{peer_base}/predictor/", body.read_bytes())
                if status != 200 or b'"success":true' not in answer.replace(b" ", b""):
                    raise RuntimeError(f"the peer answered {status}: {answer[:300]!r}")
                theirs, rates = measure(
                    f"{peer_base}/predictor/", body, script, connections=c,
                    seconds=args.detector_duration, repeats=args.repeats, pids=pids,
                    probe_base=None,
                )  # fmt: skip
                # wrk counts only answers within the run: a slow point may have none.
                ratio = (
                    f"x{point.pictures_per_s / theirs.pictures_per_s:.2f} pictures/s, "
                    f"x{point.p50_ms / theirs.p50_ms:.2f} p50"
                    if theirs.pictures_per_s and theirs.p50_ms
                    else "the peer answered nothing within the run"
                )
                print(
                    f"  {model:14} {name:15} c={c:<3} modelport {point.pictures_per_s:6.1f}/s "
                    f"p50 {point.p50_ms:7.1f} | peer {theirs.pictures_per_s:6.1f}/s "
                    f"({', '.join(f'{r:.1f}' for r in rates)}) p50 {theirs.p50_ms:7.1f} | "
                    f"{ratio}; errors {point.errors}/{theirs.errors}, other cpu "
                    f"{point.other_cpu:.2f}/{theirs.other_cpu:.2f}"
                )
    finally:
        if args.keep:
            print(f"kept {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
