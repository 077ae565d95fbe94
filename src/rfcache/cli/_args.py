"""Flags one-to-one with a config dataclass's fields: kebab-case names, help from field metadata."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["DTYPES", "add_config_arguments", "config_from_args", "dtype_option", "option", "torch_dtype"]

T = TypeVar("T")


def option(
    default: Any, help: str, *, flag: str | None = None, metavar: str | None = None, repeat: bool = False
) -> Any:
    """A dataclass field that becomes a command-line flag (``repeat``: given once per value, a tuple)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "flag": flag, "metavar": metavar, "repeat": repeat}
    )


#: the model dtypes a command loads a pipeline in (``--dtype``)
DTYPES = ("float32", "bfloat16", "float16")


def dtype_option(what: str = "the pipeline is loaded in") -> Any:
    """The shared ``--dtype`` flag: one of :data:`DTYPES`, float32 by default."""
    return option("float32", f"{', '.join(DTYPES)}: the dtype {what}")


def torch_dtype(name: str) -> Any:
    """``--dtype``'s value as a torch dtype; anything else is one line."""
    import torch

    from rfcache.errors import RfcacheError

    if name not in DTYPES:
        raise RfcacheError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def _base_type(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(inner)
    return annotation


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        flag = meta.get("flag") or "--" + field.name.replace("_", "-")
        kind = _base_type(hints[field.name])
        kwargs: dict[str, Any] = {"default": field.default, "help": meta.get("help", "")}
        if flag.startswith("-"):
            kwargs["dest"] = field.name
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif meta.get("repeat"):
            (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
            kwargs.update(action="append", type=item, default=None)
        elif typing.get_origin(kind) is tuple:
            (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
            kwargs["type"] = _comma_list(item)
        else:
            kwargs["type"] = Path if kind is Path else kind
        if field.default not in (None, ()) and kind is not bool and not meta.get("repeat"):
            default = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
            kwargs["help"] += f" (default: {default})"
        parser.add_argument(flag, **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if f.metadata.get("repeat"):
            values[f.name] = tuple(values[f.name] or ())
    return cls(**values)


def _comma_list(item: type) -> Any:
    def parse(text: str) -> tuple:
        try:
            return tuple(item(x) for x in text.split(",") if x.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {item.__name__}: {text!r}") from exc

    parse.__name__ = f"list of {item.__name__}"
    return parse
