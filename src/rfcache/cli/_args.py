"""Flags one-to-one with a config dataclass's fields: kebab-case names, help from field metadata."""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "DTYPES",
    "add_config_arguments",
    "check_bounds",
    "config_from_args",
    "dtype_option",
    "flag_name",
    "option",
    "torch_dtype",
]

T = TypeVar("T")


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    repeat: bool = False,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
) -> Any:
    """A dataclass field that becomes a command-line flag (``repeat``: given once per value, a tuple).

    ``at_least``, ``above`` and ``at_most`` bound a number (each item of a list): a value outside is
    one line naming the flag. Floats are finite whatever the bounds (``nan``, ``inf`` are refused).
    """
    bounds = {"at_least": at_least, "above": above, "at_most": at_most}
    return dataclasses.field(
        default=default,
        metadata={"help": help, "flag": flag, "metavar": metavar, "repeat": repeat, **bounds},
    )


def flag_name(field: dataclasses.Field) -> str:
    """The flag a config field is set by (``--max-cached``; ``profile`` for a positional)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


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
        flag = flag_name(field)
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
            kwargs["type"] = Path if kind is Path else _finite if kind is float else kind
        if field.default not in (None, ()) and kind is not bool and not meta.get("repeat"):
            default = ",".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
            kwargs["help"] += f" (default: {default})"
        parser.add_argument(flag, **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The config the parsed flags describe; a number outside its field's bounds is one line."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if f.metadata.get("repeat"):
            values[f.name] = tuple(values[f.name] or ())
        check_bounds(f, values[f.name])
    return cls(**values)


def check_bounds(field: dataclasses.Field, value: Any) -> None:
    """``value`` (or each item of a tuple) within the field's ``at_least``/``above``/``at_most``."""
    from rfcache.errors import RfcacheError

    meta = field.metadata
    for item in value if isinstance(value, tuple) else (value,):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise RfcacheError(f"{flag_name(field)} must be a finite number, got {item}")
        low, above, high = meta.get("at_least"), meta.get("above"), meta.get("at_most")
        if low is not None and item < low:
            raise RfcacheError(f"{flag_name(field)} must be at least {low:g}, got {item:g}")
        if above is not None and item <= above:
            bound = f"in ({above:g}, {high:g}]" if high is not None else f"greater than {above:g}"
            raise RfcacheError(f"{flag_name(field)} must be {bound}, got {item:g}")
        if high is not None and item > high:
            bound = f"in ({above:g}, {high:g}]" if above is not None else f"at most {high:g}"
            raise RfcacheError(f"{flag_name(field)} must be {bound}, got {item:g}")


def _finite(text: str) -> float:
    """A float flag's value: a finite number (``nan``, ``inf`` and ``1e999`` refused)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


_finite.__name__ = "float"


def _comma_list(item: type) -> Any:
    convert = _finite if item is float else item

    def parse(text: str) -> tuple:
        try:
            return tuple(convert(x) for x in text.split(",") if x.strip())
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {item.__name__}: {text!r}") from exc

    parse.__name__ = f"list of {item.__name__}"
    return parse
