"""The ceiling of grpc.aio itself on this machine: a minimal server, same load as
``grpc_run.py``.

The server answers ``/inference.GRPCInferenceService/ModelInfer`` with a fixed,
pre-serialized ModelInferResponse (one FP32 row of 16, raw), without parsing the
request and without any model: whatever modelport's gRPC path reaches, it cannot beat
this. ``--parse`` parses the request and builds the response message per call, as a
real servicer must (the cost of the protobuf work alone).

    .venv/bin/python bench/grpc_ceiling.py [--duration 5] [--repeats 3] [--loop uvloop]

The server runs in a child process (this script re-runs itself with ``--serve PORT``)
so that h2load, the server and this script are separate processes, as in
``grpc_run.py``. Prints req/s per concurrency, medians over the repeats, and the cpu
other processes used meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpc_run import PATH, framed_request, h2load
from run import HOST, CpuMeter, free_port, machine

from modelport.protos import grpc_service_pb2 as pb

SERVICE, METHOD = PATH.strip("/").split("/")
STARTUP_TIMEOUT_S = 30.0


def fixed_response() -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name="mlp", model_version="1")
    response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 16])
    response.raw_output_contents.append(np.zeros((1, 16), dtype=np.float32).tobytes())
    return response


async def serve(port: int, parse: bool, options: list[tuple[str, int]], servers_count: int) -> None:
    answer = fixed_response()
    answer_bytes = answer.SerializeToString()

    async def fixed(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer_bytes

    async def parsed(
        request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        out = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        out.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 16])
        out.raw_output_contents.append(answer.raw_output_contents[0])
        return out

    if parse:
        handler = grpc.unary_unary_rpc_method_handler(
            parsed,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString,
        )
    else:
        handler = grpc.unary_unary_rpc_method_handler(fixed)  # bytes in, bytes out
    servers = []
    for _ in range(servers_count):
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
        )
        server.add_insecure_port(f"{HOST}:{port}")
        await server.start()
        servers.append(server)
    print("ready", flush=True)
    await servers[0].wait_for_termination()


def run_server(args: argparse.Namespace) -> None:
    options = [("grpc.so_reuseport", int(args.servers > 1))]
    if args.throughput:
        options.append(("grpc.optimization_target", "throughput"))  # type: ignore[arg-type]
    main = serve(args.serve, args.parse, options, args.servers)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--parse", action="store_true", help="parse and build messages")
    parser.add_argument("--throughput", action="store_true", help="optimization_target")
    parser.add_argument("--servers", type=int, default=1, help="grpc.aio servers on the port")
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_server(args)
        return
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", str(port), "--loop", args.loop]
    cmd += ["--servers", str(args.servers)]
    cmd += ["--parse"] * args.parse + ["--throughput"] * args.throughput
    print(f"machine: {machine()}\ngrpc {grpc.__version__}, loop {args.loop}, parse {args.parse}")
    with tempfile.TemporaryDirectory(prefix="modelport-grpc-ceiling-") as tmp_name:
        data = Path(tmp_name) / "request.bin"
        data.write_bytes(framed_request(256))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while proc.stdout.readline().strip() != "ready":
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the ceiling server did not start")
            h2load(port, data, 1, 1)  # warm up
            print("     c      req/s   mean ms  other cpu")
            for clients in [int(c) for c in args.concurrency.split(",")]:
                rates, means, other = [], [], []
                for _ in range(args.repeats):
                    with CpuMeter(proc.pid) as meter:
                        rate, mean, _done = h2load(port, data, clients, args.duration)
                    rates.append(rate)
                    means.append(mean)
                    other.append(meter.other)
                print(
                    f"  {clients:4d}  {statistics.median(rates):9,.0f}  "
                    f"{statistics.median(means):8.3f}  {statistics.median(other):9.2f}"
                    "   (req/s per run: " + ", ".join(f"{r:,.0f}" for r in rates) + ")"
                )
        finally:
            proc.terminate()
            proc.wait(timeout=15)


if __name__ == "__main__":
    main()
