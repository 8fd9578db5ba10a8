"""TLS on HTTP (the infer fast path included) and gRPC, with certificates made here: a
CA, a server certificate for 127.0.0.1 and localhost, a client certificate. Real
``modelport serve`` processes, real clients (httpx, tritonclient.grpc, grpc)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.auth_fixtures import add_sub_body, build_auth_repository, loopback_port, wait_until
from support.inference_server_client import PublicClient

pytestmark = pytest.mark.timeout(90)


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    other_key: Path  # a key that belongs to no certificate here


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip


def _issue(
    ca_key: ec.EllipticCurvePrivateKey, issuer: x509.Name, subject: str, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )  # fmt: skip
    if server:
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test CA")).issuer_name(_name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pki = Pki(*(folder / n for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                     "client.key", "other.key")))  # fmt: skip
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for (cert_path, key_path), server in (((pki.cert, pki.key), True),
                                          ((pki.client_cert, pki.client_key), False)):  # fmt: skip
        cert, key = _issue(ca_key, ca.subject, "127.0.0.1" if server else "camera-3", server)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
    _write_key(ec.generate_private_key(ec.SECP256R1()), pki.other_key)
    return pki


def trusting(pki: Pki, client_cert: bool = False) -> ssl.SSLContext:
    """A client context trusting the test CA, showing the client certificate if asked."""
    context = ssl.create_default_context(cafile=pki.ca)
    if client_cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


@dataclass
class TlsServer:
    url: str
    grpc_target: str
    compat: str = ""  # the zip-task cluster API's listener, on the 'tls' server


def _serve(repo: Path, data: Path, *flags: str) -> tuple[subprocess.Popen[bytes], Path, int, int]:
    port, grpc_port = loopback_port(), loopback_port()
    log = data / f"server-{port}.log"
    env = {**os.environ, "MODELPORT_DATA_DIR": str(data / f"data-{port}"), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelport", "serve", str(repo), "--port", str(port),
             "--grpc-port", str(grpc_port), *flags],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    return process, log, port, grpc_port


@pytest.fixture(scope="module")
def servers(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TlsServer]]:
    """'tls': TLS only; 'mtls': client certificates required too."""
    root = tmp_path_factory.mktemp("tls")
    repo, _ = build_auth_repository(root)
    tls = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    compat_port = loopback_port()
    started = {
        "tls": _serve(repo, root, *tls, "--compat", f"inference-server={compat_port}"),
        "mtls": _serve(repo, root, *tls, "--tls-client-ca", str(pki.ca)),
    }
    try:
        for process, log, port, _ in started.values():

            def ready(
                port: int = port, process: subprocess.Popen[bytes] = process, log: Path = log
            ) -> bool:
                assert process.poll() is None, log.read_text()
                try:
                    url = f"https://127.0.0.1:{port}/v2/health/ready"
                    with httpx.Client(verify=trusting(pki, client_cert=True)) as client:
                        return client.get(url, timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(ready, f"the TLS server on {port}")
        found = {name: TlsServer(f"https://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")
                 for name, (_, _, port, grpc_port) in started.items()}  # fmt: skip
        found["tls"].compat = f"https://127.0.0.1:{compat_port}/"
        yield found
    finally:
        for process, _, _, _ in started.values():
            process.terminate()
            process.wait(10)


def test_https_serves_the_fast_path_and_the_rest(servers: dict[str, TlsServer], pki: Pki) -> None:
    with httpx.Client(base_url=servers["tls"].url, verify=trusting(pki)) as client:
        answer = client.post("/v2/models/add_sub/infer", json=add_sub_body())
        assert answer.status_code == 200
        assert answer.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
        assert client.get("/v2/models/add_sub").json()["name"] == "add_sub"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(servers["tls"].url + "/v2/health/ready")  # the system CAs do not know ours


def test_a_compat_listener_serves_over_the_servers_tls(
    servers: dict[str, TlsServer], pki: Pki
) -> None:
    client = PublicClient(servers["tls"].compat, cert=str(pki.ca))  # its verify=cert
    assert b"Hello world" in client.get_hello_world()
    with pytest.raises(httpx.HTTPError):  # no plain HTTP on it
        httpx.get(servers["tls"].compat.replace("https", "http"), timeout=5)


def test_grpc_over_tls(servers: dict[str, TlsServer], pki: Pki) -> None:
    client = triton.InferenceServerClient(
        servers["tls"].grpc_target, ssl=True, root_certificates=str(pki.ca)
    )
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = triton.InferInput(name, [1, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
        inputs.append(tensor)
    assert client.infer("add_sub", inputs).as_numpy("OUTPUT0").tolist() == [[2.0] * 4]
    client.close()


def test_the_cli_verifies_the_server_with_a_ca_file(
    servers: dict[str, TlsServer], pki: Pki
) -> None:
    command = [sys.executable, "-m", "modelport", "--ca-file", str(pki.ca), "models",
               "--url", servers["tls"].url]  # fmt: skip
    environ = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    listed = subprocess.run(command, capture_output=True, text=True, env=environ, timeout=20)
    assert listed.returncode == 0, listed.stderr
    assert "add_sub" in listed.stdout


def _grpc_health(target: str, credentials: grpc.ChannelCredentials) -> int:
    with grpc.secure_channel(target, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status)


def test_client_certificates_are_required_when_a_client_ca_is_set(
    servers: dict[str, TlsServer], pki: Pki
) -> None:
    mtls = servers["mtls"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(mtls.url + "/v2/health/ready", verify=trusting(pki))
    with httpx.Client(verify=trusting(pki, client_cert=True)) as client:
        answer = client.post(mtls.url + "/v2/models/add_sub/infer", json=add_sub_body())
    assert answer.status_code == 200

    ca = pki.ca.read_bytes()
    with pytest.raises(grpc.RpcError) as caught:
        _grpc_health(mtls.grpc_target, grpc.ssl_channel_credentials(ca))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(
        ca, pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    assert _grpc_health(mtls.grpc_target, with_cert) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{cert}", "--tls-key", "{other_key}"], "the key does not belong"),
        (["--tls-cert", "{folder}/missing.pem", "--tls-key", "{key}"], "cannot read it"),
        (["--tls-cert", "{cert}"], "tls_key (--tls-key) is missing"),
        (["--tls-cert", "{key}", "--tls-key", "{key}"], "not a PEM certificate and key"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{key}"],
         "tls_client_ca"),
    ],
)  # fmt: skip
def test_bad_tls_files_stop_serve_with_a_clear_error(
    pki: Pki, tmp_path: Path, flags: list[str], message: str
) -> None:
    paths = {"cert": pki.cert, "key": pki.key, "other_key": pki.other_key, "folder": tmp_path}
    args = [f.format(**paths) for f in flags]
    env = {**os.environ, "MODELPORT_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "400"}
    result = subprocess.run(
        [sys.executable, "-m", "modelport", "serve", str(tmp_path), "--port", "0",
         "--grpc-port", "0", *args],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr
