"""Settings: the one reader of flags, ``MODELPORT_*`` environment and ``modelport.toml``.

Precedence, highest first: command-line flags, environment (``MODELPORT_PORT=9000``),
the ``[server]`` table of ``modelport.toml`` (in the working folder, or the file named
by ``--config`` / ``MODELPORT_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "MODELPORT_"
CONFIG_FILE = "modelport.toml"
EXAMPLES = Path(__file__).parent / "examples"


class SettingsError(ValueError):
    """A setting with a bad value; the message names its source."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: str = Field(default=str(EXAMPLES), description="model repository folder")
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    grpc_port: int = Field(
        default=8001, ge=0, le=65535, description="gRPC port (KServe v2); 0 turns gRPC off"
    )
    grpc_max_message_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="largest gRPC message, either way"
    )
    grpc_max_concurrent_rpcs: int = Field(
        default=0, ge=0, description="gRPC calls running at once (0: no limit)"
    )
    server_name: str = "modelport"

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config: Path | None = None,
    ) -> Settings:
        """Merge the three sources; ``None`` flags mean 'not given'."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}  # setting -> where its value came from, for errors
        path = config or Path(environ.get(f"{ENV_PREFIX}CONFIG", CONFIG_FILE))
        if path.is_file():
            try:
                doc = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(f"{path}: {exc}") from None
            values.update(doc.get("server", doc))
            sources.update(dict.fromkeys(values, str(path)))
        elif config is not None:
            raise SettingsError(f"{config}: no such settings file")
        for name in cls.model_fields:
            env = environ.get(ENV_PREFIX + name.upper())
            if env is not None:
                values[name] = env
                sources[name] = ENV_PREFIX + name.upper()
        given = {k: v for k, v in (flags or {}).items() if v is not None}
        values.update(given)
        sources.update(dict.fromkeys(given, "command line"))
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                + (f" (from {sources[e['loc'][0]]})" if e["loc"] and e["loc"][0] in sources else "")
                for e in exc.errors()
            )
            raise SettingsError(f"bad settings ({problems})") from None
