"""TLS for HTTP and gRPC: the certificate, its key, and optionally a CA for clients.

:func:`load_tls` reads and checks the files once at startup (present, readable, PEM,
the key matching the certificate), so a mistake stops ``modelport serve`` with a
message naming the file, rather than failing each connection later. With a client CA,
both ports require a client certificate it signed.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TlsError(ValueError):
    """A TLS setting that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Checked TLS files, and their bytes for gRPC."""

    cert: Path
    key: Path
    client_ca: Path | None
    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None

    def uvicorn_options(self) -> dict[str, Any]:
        """``uvicorn.Config`` keyword arguments for HTTPS."""
        options: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            options.update(ssl_ca_certs=str(self.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return options


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{setting} {path}: cannot read it ({exc.strerror or exc})") from None


def load_tls(cert: str, key: str, client_ca: str = "") -> TlsFiles | None:
    """The checked files, or None when TLS is off (no cert and no key)."""
    if not cert and not key:
        if client_ca:
            raise TlsError("tls_client_ca needs tls_cert and tls_key (TLS is off without them)")
        return None
    if not cert or not key:
        missing = "tls_cert (--tls-cert)" if not cert else "tls_key (--tls-key)"
        raise TlsError(f"TLS needs both a certificate and its key; {missing} is missing")
    cert_path, key_path = Path(cert), Path(key)
    cert_pem, key_pem = _read(cert_path, "tls_cert"), _read(key_path, "tls_key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        reason = (
            "the key does not belong to the certificate"
            if "KEY_VALUES_MISMATCH" in str(exc)
            else f"not a PEM certificate and key ({exc.reason or exc})"
        )
        raise TlsError(f"tls_cert {cert_path} / tls_key {key_path}: {reason}") from None
    ca_path, ca_pem = None, None
    if client_ca:
        ca_path = Path(client_ca)
        ca_pem = _read(ca_path, "tls_client_ca")
        try:
            context.load_verify_locations(cafile=ca_path)
        except ssl.SSLError as exc:
            raise TlsError(
                f"tls_client_ca {ca_path}: not a PEM CA certificate ({exc.reason or exc})"
            ) from None
    return TlsFiles(cert_path, key_path, ca_path, cert_pem, key_pem, ca_pem)
