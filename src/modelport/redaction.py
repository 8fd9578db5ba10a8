"""The one rule for what of a URL or a header modelport may show or log.

A ``runtime: remote`` model's URL may carry ``user:password@`` and its headers a bearer
token; a repository URL may carry an access key. Whatever modelport answers a caller
(``/config``, index reasons, errors, TF Serving's status), prints (the start banner,
``modelport models``) or logs goes through :func:`redact_url` and
:func:`redact_headers`: user info and the values of credential-like headers become
:data:`REDACTED`, everything else stays readable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"

# Headers that carry a credential by name, and any whose name says it holds one.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_SECRET_WORDS = re.compile(r"token|secret|key|password|passwd|credential|auth|session", re.I)
# ``scheme://user:password@`` anywhere in a text: an error message that quotes a URL.
_USER_INFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]*@")


def is_secret_header(name: str) -> bool:
    """Whether a header (or gRPC metadata key) named ``name`` carries a credential."""
    lowered = name.lower()
    return lowered in _SECRET_HEADERS or _SECRET_WORDS.search(lowered) is not None


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with the value of every credential-like header replaced."""
    return {k: REDACTED if is_secret_header(k) else v for k, v in headers.items()}


def redact_url(url: str) -> str:
    """``url`` with any user info (``user:password@``) replaced by :data:`REDACTED`."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL modelport can read: scrub it as text
        return redact_text(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{parts.netloc.rsplit('@', 1)[1]}"))


def redact_text(text: str) -> str:
    """``text`` with the user info of every URL in it replaced (messages from libraries
    that quote the URL they failed on)."""
    return _USER_INFO.sub(rf"\g<scheme>{REDACTED}@", text)
