"""``modelport keys``: create, list and revoke API keys, in the keys file a server reads.

The server sees the changes within about a second, without a restart. The file is the
one of the ``keys_file`` setting, else ``data_dir/keys.json``: run these commands with
the settings (``modelport.toml``, ``MODELPORT_*``) the server runs with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from modelport.security.keys import SCOPES, KeyFileError, KeyStore
from modelport.settings import Settings, SettingsError

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

KeysFileOption = Annotated[
    Path | None,
    typer.Option("--keys-file", help="The keys file [keys_file, else data_dir/keys.json]."),
]
ConfigOption = Annotated[Path | None, typer.Option(help="A modelport.toml settings file.")]


def _store(keys_file: Path | None, config: Path | None) -> KeyStore:
    try:
        flags = {"keys_file": str(keys_file) if keys_file else None}
        settings = Settings.load(flags, config=config)
        return KeyStore(settings.keys_path)
    except (SettingsError, KeyFileError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@keys_app.command()
def create(
    *,
    name: Annotated[str, typer.Argument(help="Who or what uses the key, e.g. camera-3.")],
    scope: Annotated[
        list[str],
        typer.Option(help=f"A scope the key has ({', '.join(SCOPES)}); repeat for more."),
    ],
    keys_file: KeysFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print its token, once: only its hash is kept."""
    store = _store(keys_file, config)
    try:
        new = store.create(name, scope)
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    err.print(
        f"key {new.key.id} ({new.key.name}, {', '.join(sorted(new.key.scopes))}) added to "
        f"{store.path}; the token below is shown only now:"
    )
    print(new.token)


@keys_app.command("list")
def list_keys(keys_file: KeysFileOption = None, config: ConfigOption = None) -> None:
    """The keys: id, name, scopes, created (never a token or its hash)."""
    store = _store(keys_file, config)
    table = Table("id", "name", "scopes", "created", title=str(store.path))
    keys = store.all()
    for key in keys:
        table.add_row(key.id, key.name, ", ".join(sorted(key.scopes)), key.created)
    console.print(table)
    if not keys and store.path.exists():
        err.print(
            "no keys: a server reading this file refuses every call that needs a key; "
            f"create one, or delete {store.path} to turn keys off"
        )


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see `modelport keys list`).")],
    keys_file: KeysFileOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a key: servers refuse it within about a second."""
    store = _store(keys_file, config)
    try:
        key = store.revoke(key_id)
    except KeyError:
        err.print(f"[red]error:[/red] no key {key_id!r} in {store.path}; see `modelport keys list`")
        raise typer.Exit(1) from None
    console.print(f"revoked key {key.id} ({key.name})")
