"""Allow-lists of where models may come from: URLs and container images.

A model can name places beyond the repository the operator chose: a ``runtime: remote``
model's ``remote.url`` (modelport sends it every batch), and a container model posted by
a client through the zip-task cluster API (its image runs on this host). Each is checked
against an allow-list of globs (:func:`fnmatch.fnmatchcase`: ``*`` is any text, ``?``
one character):

- ``model_sources``: URLs, e.g. ``grpc://triton-*:8001``, ``https://models.example.com/*``.
  A URL is compared as ``scheme://host[:port][/path]``, without any ``user:password@``,
  so ``http://good:*`` cannot be satisfied by ``http://good:1@evil``. The repository
  given to ``serve`` or ``pull`` is the operator's own choice and is always allowed.
- ``model_images``: image references as posted, e.g. ``registry.example.com/lab/*``.

Both are empty by default: nothing beyond the operator's repository is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from modelport.errors import Forbidden


def normalized_url(url: str) -> str:
    """``url`` as ``scheme://host[:port][/path]``: lower-case scheme and host, no user
    information, query or fragment, no trailing ``/``."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ":?"  # an invalid port matches no pattern naming a real one
    return f"{parts.scheme.lower()}://{host}{port}{parts.path}".rstrip("/")


@dataclass(frozen=True, slots=True)
class AllowList:
    """Globs that a URL or an image must match; ``setting`` names where they come from."""

    patterns: tuple[str, ...]
    setting: str

    def allows_url(self, url: str) -> bool:
        target = normalized_url(url)
        return any(_url_matches(target, pattern) for pattern in self.patterns)

    def allows_image(self, image: str) -> bool:
        return any(fnmatchcase(image.strip(), pattern) for pattern in self.patterns)

    def check_url(self, url: str, what: str) -> None:
        """Forbidden, naming the URL and the setting, unless ``url`` is allowed."""
        if not self.allows_url(url):
            raise Forbidden(self._refusal(what, normalized_url(url)))

    def check_image(self, image: str, what: str) -> None:
        """Forbidden, naming the image and the setting, unless ``image`` is allowed."""
        if not self.allows_image(image):
            raise Forbidden(self._refusal(what, image))

    def _refusal(self, what: str, value: str) -> str:
        allowed = ", ".join(self.patterns) if self.patterns else "nothing"
        env = "MODELPORT_" + self.setting.upper()
        return (
            f"{what} {value} is not allowed by {self.setting} (which allows {allowed}); "
            f"the operator can add it, e.g. {env}={value}, or {self.setting} = "
            f'["{value}"] in modelport.toml'
        )


def _url_matches(target: str, pattern: str) -> bool:
    # A pattern without wildcards names a URL and everything under it.
    pattern = normalized_url(pattern) if "://" in pattern and not _wild(pattern) else pattern
    if not _wild(pattern):
        return target == pattern or target.startswith(pattern + "/")
    return fnmatchcase(target, pattern.rstrip("/"))


def _wild(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def url_allow_list(patterns: Iterable[str], operator_urls: Iterable[str] = ()) -> AllowList:
    """The ``model_sources`` allow-list, plus the URLs the operator gave on the command
    line (the repository), which are allowed as they are."""
    given = tuple(u for u in operator_urls if u and "://" in u)
    return AllowList((*patterns, *given), "model_sources")


def image_allow_list(patterns: Iterable[str]) -> AllowList:
    return AllowList(tuple(patterns), "model_images")
