"""Flags and config files into a command's config dataclass, and the resolved config out.

A command is a frozen dataclass (each field's default, `metadata={"help": ...}` and type
written once, checked in `__post_init__`) plus a `run(config)`. transformers'
`HfArgumentParser` (TRL's parser; transformers is installed anyway) turns the fields into
flags: `--name` and `--na-me` both work, `bool` fields take `--flag`, `--flag false` or
`--no-flag`, lists take several values, `Literal` fields list their choices. What this
module adds:
- `metadata={"positional": True}` makes a field an argument without a flag
  (`python -m data import SHARD ...`);
- `--config FILE` (YAML or JSON, the keys are the fields) sets defaults that flags
  override: defaults < file < flags; `save_config` writes the resolved config back in the
  same form, so a saved file is itself a valid `--config`;
- a bad flag or key is one `UsageError` line naming the nearest valid one, not argparse's
  usage text and exit status 2;
- `parse_command` picks a subcommand's dataclass by the first word.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import re
import shlex
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import yaml
from transformers import HfArgumentParser

from cli.errors import UsageError

Config = TypeVar("Config")
CONFIG_FILE = "config.yaml"  # a command's resolved config, in the folder it writes


def setting(help: str, default=dataclasses.MISSING, factory=dataclasses.MISSING,
            **flag) -> dataclasses.Field:
    """A config field with its help (and, in `flag`, `positional=True`, `metavar`,
    `choices`): what the command's `--help` and its flag say about it."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"help": help, **flag})


class _HelpFormatter(argparse.HelpFormatter):
    """Each setting's default after its help, unless the help says it in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace("%", "%%")  # argparse %-formats what this returns
        if any(action.default is nothing for nothing in (None, argparse.SUPPRESS, False)) \
                or action.default in ([], "") or "default" in text:
            return text
        shown = " ".join(map(str, action.default)) if isinstance(action.default, list) \
            else action.default
        return f"{text} (default: {shown})"


class CommandParser(HfArgumentParser):
    """HfArgumentParser for one config dataclass, with positional fields and errors that
    are one line."""

    def __init__(self, config_class: type, prog: str, description: str | None = None,
                 **argparse_options):
        self.config_class = config_class
        super().__init__(config_class, prog=prog, description=description or _doc(config_class),
                         formatter_class=_HelpFormatter,
                         allow_abbrev=False,  # `--lr` must not quietly mean --lr-scheduler
                         **argparse_options)
        self.add_argument("--config", type=Path, metavar="FILE",
                          help="a YAML or JSON file of settings (the fields above); flags "
                               "given too override it")

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field):
        kind, many = item_type(field.type)
        help_text = field.metadata.get("help")
        if field.metadata.get("positional"):
            optional = field.default is not dataclasses.MISSING or (
                field.default_factory is not dataclasses.MISSING)
            nargs = ("*" if many else "?") if optional else ("+" if many else None)
            parser.add_argument(field.name, type=kind, nargs=nargs, help=help_text,
                                metavar=field.metadata.get("metavar", field.name.upper()),
                                default=_default(field) if optional else None)
            return
        options = sorted({f"--{field.name.replace('_', '-')}", f"--{field.name}"},
                         key=lambda option: "_" in option)  # dashes first, as docs write them
        if field.metadata.get("repeat"):  # `--model A --model B` (or `--model A B`)
            parser.add_argument(*options, action="extend", nargs="+", type=kind, default=None,
                                help=help_text, metavar=field.metadata.get("metavar"))
            return
        after = {key: field.metadata[key] for key in ("nargs", "metavar")
                 if key in field.metadata}
        if after:  # set once the library made the flag: it would refuse them with a list
            field = copy.copy(field)
            field.metadata = MappingProxyType(
                {k: v for k, v in field.metadata.items() if k not in after})
        known = len(parser._actions)
        HfArgumentParser._parse_dataclass_field(parser, field)
        for action in parser._actions[known:]:
            action.option_strings.sort(key=lambda option: "_" in option)
            if action.nargs == "?" and action.const is True:
                action.metavar = "true|false"
            for key, value in after.items():
                setattr(action, key, value)

    def error(self, message: str):
        unknown = re.match(r"unrecognized arguments: (-\S+)", message)
        if unknown:
            message = f"unknown flag {unknown[1]}: {self.hint(unknown[1], self.flags())}"
        raise UsageError(f"{self.prog}: {message} ({self.prog} --help lists every setting)")

    def hint(self, name: str, choices: Sequence[str], prefix: str = "--") -> str:
        """What to use instead of the unknown flag or key `name`."""
        return nearest(name, choices, prefix)

    def flags(self) -> list[str]:
        return [option for option in self._option_string_actions if option.startswith("--")]

    def parse(self, argv: Sequence[str], defaults: dict | None = None) -> Config:
        """The config that `argv` (flags, positionals and perhaps `--config FILE`) gives,
        over `defaults` (what a command composing this one sets: rounds' stages)."""
        if defaults:
            values = self._checked_values(defaults, "the defaults given")
            self.set_defaults(**values)
            self._not_required(values)
        file_flag = argparse.ArgumentParser(add_help=False)
        file_flag.add_argument("--config", type=Path)
        path = file_flag.parse_known_args(list(argv))[0].config
        if path is not None:
            values = self._file_values(path)
            self.set_defaults(**values)
            self._not_required(values)
        config, *rest = self.parse_args_into_dataclasses(
            list(argv), return_remaining_strings=True, look_for_args_file=False)
        if rest[-1]:
            self.error(f"unrecognized arguments: {' '.join(rest[-1])}")
        return config

    def _file_values(self, path: Path) -> dict:
        return self._checked_values(read_config_file(path), str(path))

    def _checked_values(self, values: dict, where: str) -> dict:
        actions = {action.dest: action for action in self._actions}
        known = [f.name for f in dataclasses.fields(self.config_class)]
        out = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise UsageError(f"{where}: unknown key {key!r}: "
                                 f"{self.hint(name, known, prefix='')}")
            out[name] = _typed(actions[name], value, f"{where}: {key}")
        return out

    def _not_required(self, values: dict) -> None:
        """A field the file sets is no longer required on the command line."""
        for action in self._actions:
            if action.dest in values:
                action.required = False
                if not action.option_strings and action.nargs in ("+", None):
                    action.nargs = "*" if action.nargs == "+" else "?"


def item_type(annotation) -> tuple[type, bool]:
    """(the type of one value, whether the field holds a list) of `list[int] | None` and
    the like."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _doc(config_class: type) -> str | None:
    doc = config_class.__doc__
    return None if doc is None or doc.startswith(config_class.__name__ + "(") else doc


def _default(field: dataclasses.Field):
    return field.default_factory() if field.default_factory is not dataclasses.MISSING \
        else field.default


def _typed(action: argparse.Action, value, where: str):
    """A value read from a file, converted and checked as the flag's text would be."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_typed(action, item, where) for item in value]
    try:
        if isinstance(value, str) and action.type is not None:
            value = action.type(value)
        elif action.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise UsageError(f"{where}: {error}") from None
    if action.choices is not None and value not in action.choices:
        raise UsageError(f"{where}: {value!r} is not one of "
                         f"{', '.join(map(str, action.choices))}")
    return value


def nearest(name: str, choices: Sequence[str], prefix: str = "--") -> str:
    """"use X, the nearest" for the choice nearest to `name` (a flag in the user's own
    spelling, dashes or underscores), or that none is near."""
    bare = name.lstrip("-").replace("-", "_")
    close = difflib.get_close_matches(
        bare, {choice.lstrip("-").replace("-", "_") for choice in choices}, n=1, cutoff=0.6)
    if not close:
        return "no setting is near it"
    spelt = close[0] if "_" in name or not prefix else close[0].replace("_", "-")
    return f"use {prefix}{spelt}, the nearest"


def read_config_file(path: Path) -> dict:
    """The mapping a YAML or JSON config file holds, or one line saying why not."""
    try:
        text = Path(path).read_text()
        values = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise UsageError(f"cannot read config {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path} must hold a mapping of settings to values")
    return values


def parse(config_class: type[Config], argv: Sequence[str], prog: str,
          defaults: dict | None = None) -> Config:
    """`config_class` filled from `argv`: its defaults (or `defaults`), then `--config
    FILE`, then flags."""
    return CommandParser(config_class, prog).parse(argv, defaults)


def parse_command(commands: dict[str, type], argv: Sequence[str], prog: str,
                  default: str | None = None) -> tuple[str, object]:
    """The subcommand `argv[0]` names (or `default`, when argv does not start with one) and
    its config, filled from the rest of argv."""
    argv = list(argv)
    if argv and argv[0] in commands:
        name, argv = argv[0], argv[1:]
    elif default is not None:  # its --help names the other commands
        name = default
    else:
        if argv and argv[0] in ("-h", "--help"):
            print(command_list(commands, prog))
            raise SystemExit(0)
        given = f"unknown command {argv[0]!r}" if argv else "a command is needed"
        raise UsageError(f"{prog}: {given}: one of {', '.join(commands)} "
                         f"({prog} --help says what each does)")
    return name, parse(commands[name], argv, f"{prog} {name}" if name != default else prog)


def command_list(commands: dict[str, type], prog: str) -> str:
    lines = [f"usage: {prog} {{{','.join(commands)}}} ...", ""]
    for name, config_class in commands.items():
        about = " ".join((_doc(config_class) or "").split("\n\n")[0].split())
        lines.append(f"  {name:8} {about.split('; ')[0].split('. ')[0].rstrip('.')}")
    return "\n".join(lines + ["", f"{prog} COMMAND --help lists a command's settings."])


def command_line(prog: str, config) -> str:
    """The command that gives `config`: its positional values, then each setting that
    differs from its default as a flag; what a report shows as the command that made it."""
    words, flags = [], []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        plain = value if isinstance(value, list) else [value]
        if field.metadata.get("positional"):
            words += [str(v) for v in plain]
        elif value != _default(field):
            flag = "--" + field.name.replace("_", "-")
            if isinstance(value, bool):
                flags += [flag] if value else [flag, "false"]
            else:
                flags += [flag, *(str(v) for v in plain)]
    return " ".join([prog, *(shlex.quote(word) for word in words + flags)])


def config_values(config) -> dict:
    """The resolved config as plain YAML-able values (paths as text)."""
    def plain(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value
    return {key: plain(value) for key, value in dataclasses.asdict(config).items()}


def save_config(config, path: Path) -> Path:
    """Write the resolved config as YAML at `path`; `--config path` gives it back."""
    path.write_text(yaml.safe_dump(config_values(config), sort_keys=False))
    return path


def save_config_beside(config, output: Path, command: str) -> Path:
    """The resolved config of a command whose output is one file (a store), saved beside
    it: runs/prefs.duckdb -> runs/prefs.feedback.yaml, the last such run's settings."""
    output = Path(output)
    return save_config(config, output.parent / f"{output.stem}.{command}.yaml")
