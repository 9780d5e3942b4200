"""Command-line options generated from config dataclasses, so that every default exists once:
in the dataclass. A field becomes `--field-name` (or its `flag`), typed from its annotation;
`help`, `choices`, `aliases` (old flag names still accepted) and `group` come from its metadata:

    lr: float = option(5e-6, "AdamW learning rate", group="optimiser")

Parsing leaves out every option the user did not give (argparse.SUPPRESS), so `build` can tell
"given" from "default": a named recipe's values then sit between the dataclass defaults and the
user's flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None, aliases=(),
           choices=None, group: str | None = None, cli: bool = True, default_factory=dataclasses.MISSING):
    """A dataclass field with what its command-line option needs. cli=False: no option."""
    meta = {"help": help, "flag": flag, "aliases": tuple(aliases), "choices": choices, "group": group, "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def names(text: str) -> list[str]:
    """"a,b, c" -> ["a", "b", "c"]"""
    return [x.strip() for x in text.split(",") if x.strip()]


def size(text: str) -> list[int]:
    """"56x56", "56,56" or "56" -> [56, 56] (height, width)"""
    try:
        parts = [int(x) for x in text.replace("x", ",").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 64x64, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected HxW such as 64x64, got {text!r}")
    return [parts[0], parts[0]] if len(parts) == 1 else parts


def _base(tp):
    """X | None -> (X, True); X -> (X, False)"""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _kwargs(name: str, tp) -> dict:
    tp, _ = _base(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list and args == (str,):
        return {"type": names, "metavar": "A,B"}
    if origin is list and args == (int,):
        return {"type": size, "metavar": "HxW"}
    if origin is tuple:
        return {"type": args[0], "nargs": len(args)}
    if tp in (int, float, str):
        return {"type": tp}
    if tp is dict:
        raise TypeError(f"{name}: dict fields need cli=False")
    return {"type": str}


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        d = f.default
    elif f.default_factory is not dataclasses.MISSING:
        d = f.default_factory()
    else:
        return "required"
    if isinstance(d, (list, tuple)):
        d = ",".join(map(str, d))
    return f"default: {d}"


def add_options(parser: argparse.ArgumentParser, cls, exclude=()) -> None:
    """One option per field of `cls` (except those in exclude or with cli=False)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in exclude or not meta.get("cli", True):
            continue
        target = parser
        if meta.get("group"):
            target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        kw = _kwargs(f.name, hints[f.name])
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        aliases = meta.get("aliases", ())
        note = f" (old name: {', '.join(aliases)})" if aliases else ""
        target.add_argument(flag, *aliases, dest=f.name, required=required, default=argparse.SUPPRESS,
                            help=f"{meta.get('help', '')} [{_default_text(f)}]{note}", **kw)


def build(cls, args: argparse.Namespace, base: dict | None = None, **fixed):
    """An instance of cls: its defaults, then `base` (e.g. a recipe), then the options given."""
    field_names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in field_names}
    values = {**(base or {}), **given, **fixed}
    hints = typing.get_type_hints(cls)
    for k, v in values.items():  # argparse's nargs gives lists; a recipe may hold tuples
        origin = typing.get_origin(_base(hints[k])[0])
        if isinstance(v, (list, tuple)) and origin in (list, tuple):
            values[k] = origin(v)
    return cls(**values)
