"""The command lines of ``tritonserver`` and ``tensorflow_model_server``, read as those
servers read them, so a compose service or a script keeps its ``command:``.

Both take ``--flag=value`` and ``--flag value`` (a single dash too, as their parsers
do); a boolean flag alone means true, and takes ``=true`` / ``=false`` (or ``1`` /
``0``), or the next argument when it is one of those. A repeated flag that is not
``repeated`` keeps its last value. An unknown flag, a missing or malformed value, or a
positional argument is a :class:`FlagError` naming it; ``--help`` lists the flags.
A flag that means nothing here (``Flag.unused``) is accepted, and one note per flag
says why, for the command to print once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from modelport.settings import Settings

FlagKind = Literal["text", "int", "float", "bool"]
TRUE = frozenset({"true", "1"})
FALSE = frozenset({"false", "0"})


class FlagError(ValueError):
    """A command line the upstream server would refuse too; the message names the flag."""


class HelpAsked(Exception):
    """``--help`` (or ``-h``) was given."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Flag:
    """One flag of an upstream server: its name (no dashes), its kind, what it does
    here; ``unused`` says why it has no effect here ("" when it has one)."""

    name: str
    kind: FlagKind
    help: str
    repeated: bool = False
    unused: str = ""


@dataclass(frozen=True, slots=True)
class ParsedFlags:
    """The flags given, by name (a list for repeated ones), and one note per unused flag."""

    values: dict[str, Any]
    notes: tuple[str, ...]

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)


@dataclass(frozen=True, slots=True)
class UpstreamStart:
    """What an upstream command line asks for: the settings to serve with, the notes
    to print once (flags that mean nothing here), and TF Serving's metrics path."""

    settings: Settings
    notes: tuple[str, ...]
    monitoring: str = ""


def parse_flags(args: Sequence[str], flags: Sequence[Flag], *, program: str) -> ParsedFlags:
    """Read ``args`` as ``program`` would (see the module docstring)."""
    known = {flag.name: flag for flag in flags}
    values: dict[str, Any] = {}
    notes: dict[str, str] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg in ("--help", "-h", "-help", "--helpfull"):
            raise HelpAsked
        if not arg.startswith("-") or arg.strip("-") == "":
            raise FlagError(
                f"{program}: unexpected argument {arg!r}; every argument is a --flag "
                f"(see modelport {program} --help)"
            )
        name, equals, text = arg.lstrip("-").partition("=")
        flag = known.get(name)
        if flag is None:
            raise FlagError(
                f"{program}: unknown flag --{name}; the flags {program} takes here are "
                f"listed by modelport {program} --help"
            )
        if flag.kind == "bool":
            if not equals and index < len(args) and args[index].lower() in TRUE | FALSE:
                text, equals = args[index], "="
                index += 1
            value: Any = _boolean(flag, text, program) if equals else True
        else:
            if not equals:
                if index >= len(args) or args[index].startswith("--"):
                    raise FlagError(f"{program}: --{name} needs a value ({_kind(flag)})")
                text = args[index]
                index += 1
            value = _convert(flag, text, program)
        if flag.repeated:
            values.setdefault(name, []).append(value)
        else:
            values[name] = value
        if flag.unused:
            notes.setdefault(name, f"--{name} is accepted and has no effect here: {flag.unused}")
    return ParsedFlags(values, tuple(notes.values()))


def _boolean(flag: Flag, text: str, program: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise FlagError(f"{program}: --{flag.name}={text}: expected true or false")


def _convert(flag: Flag, text: str, program: str) -> Any:
    try:
        if flag.kind == "int":
            return int(text)
        if flag.kind == "float":
            return float(text)
    except ValueError:
        raise FlagError(f"{program}: --{flag.name}={text}: expected {_kind(flag)}") from None
    return text


def _kind(flag: Flag) -> str:
    return {"int": "an integer", "float": "a number", "text": "a value"}.get(flag.kind, "")


def flags_help(program: str, summary: str, flags: Sequence[Flag]) -> str:
    """What ``--help`` prints: the summary, then each flag with what it does here."""
    lines = [summary, "", f"usage: modelport {program} [--flag=value ...]", ""]
    for flag in flags:
        value = "" if flag.kind == "bool" else f"=<{flag.kind}>"
        what = flag.help if not flag.unused else f"(no effect here: {flag.unused})"
        lines.append(f"  --{flag.name}{value}{' (repeatable)' if flag.repeated else ''}")
        lines.append(f"      {what}")
    return "\n".join(lines)
