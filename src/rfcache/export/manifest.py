"""The engine-bundle format: its constants, the manifest's specs and their validation.

A bundle's ``manifest.json`` records the format version, the versions it was made with, each graph's
input and output names and shapes, the schedule, the sampler's configuration and a sha256 for every
other file (bundle.py reads and writes the folder). This module knows what a manifest may hold and
checks it once, so a bad manifest fails here with one line: a single-engine manifest
(:func:`validate_engine`) or a two-expert one (:func:`validate_experts`, whose ``experts`` list names
one complete single-engine bundle per sub-folder). It also names the tensors every stage agrees on
(the graphs' input and output names) and resolves a manifest shape's symbols. No torch import.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfcache.errors import RfcacheError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "COEFFS",
    "CONDITIONING_PREFIX",
    "DECODER_INPUT",
    "DECODER_OUTPUT",
    "DISTANCE",
    "MANIFEST",
    "MODEL_OUTPUT",
    "PER_UNIT_VERSION",
    "PREVIOUS",
    "PROFILE",
    "READ_VERSIONS",
    "UNIT_COEFFS",
    "BundleError",
    "GraphSpec",
    "TensorSpec",
    "TextAxis",
    "content_hash",
    "decode_config",
    "encode_config",
    "first_line",
    "graph_spec",
    "is_expert_manifest",
    "kind_graph",
    "parse_manifest",
    "resolve_shape",
    "validate_engine",
    "validate_experts",
]

BUNDLE_FORMAT = "rfcache-bundle"
BUNDLE_VERSION = 3  # 3: the text token axis (``axes.text``; ``"text"`` / ``"text+K"`` in shapes)
PER_UNIT_VERSION = 4  # 4: a per-unit profile's bundle, one step graph per step kind (``schedule.kinds``)
READ_VERSIONS = (BUNDLE_VERSION, PER_UNIT_VERSION)
MANIFEST = "manifest.json"
PROFILE = "profile.yaml"
MAX_MANIFEST_BYTES = 16 << 20

# the names of the graphs' inputs and outputs, which the writer gives and every runner binds
MODEL_OUTPUT = "sample"  # the transformer's output, first output of both step graphs
DISTANCE = "distance"  # the full graph's input: steps since the previous full step
COEFFS = "coeffs"  # the cached graph's input at the same place: k^i / i! (and a step-linear ratio's position)
# a step-kind graph's input at the same place, one row per unit: a computed unit's distance (column 0),
# a predicted unit's coeffs
UNIT_COEFFS = "unit_coeffs"
PREVIOUS = "prev."  # prefix of the full graph's inputs that are the previous full step's state
CONDITIONING_PREFIX = "c."  # prefix of the conditioning graph's outputs, the step graphs' c.* inputs
DECODER_INPUT = "latents"
DECODER_OUTPUT = "image"


class BundleError(RfcacheError, ValueError):
    """A bundle folder that is missing, incomplete, altered, or made for another setup."""


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape (``"batch"`` for the dynamic batch axis, ``"steps"`` for
    the conditioning graph's step axis, ``"text"`` for a dynamic text token axis and ``"text+K"``
    for one of text and ``K`` image tokens) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class GraphSpec:
    """One graph of a bundle: its file and its inputs and outputs in order."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class TextAxis:
    """The text token axis of a bundle's graphs: its length at export, where it lies in which
    inputs, and whether the graphs take another length (``reason`` says why not)."""

    tokens: int
    inputs: dict[str, int]
    dynamic: bool
    reason: str | None = None

    def check(self, tokens: int, where: Path, max_sequence_length: Any = None) -> None:
        """Refuse a run at ``tokens`` text tokens where the axis is fixed at another length."""
        if self.dynamic or tokens == self.tokens:
            return
        hint = f" (max_sequence_length {max_sequence_length})" if max_sequence_length is not None else ""
        raise BundleError(
            f"{where}: the text axis is fixed at {self.tokens} tokens{hint} ({self.reason}); "
            f"the pipeline passed {tokens}: run at the bundle's max_sequence_length or export again"
        )


def resolve_shape(shape: tuple[int | str, ...] | list[int | str], sizes: dict[str, int]) -> list[int]:
    """A manifest shape with its symbols (``batch``, ``steps``, ``text``, ``text+K``) replaced by ``sizes``."""
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        else:
            name, _, offset = d.partition("+")
            out.append(sizes[name] + int(offset or 0))
    return out


def encode_config(value: Any) -> Any:
    """A config as strict JSON: tuples to lists, numpy scalars to numbers, inf/NaN to ``{"float": "-inf"}``."""
    if isinstance(value, dict):
        return {str(k): encode_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_config(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    return value


def decode_config(value: Any) -> Any:
    """The inverse of :func:`encode_config`."""
    if isinstance(value, dict):
        if set(value) == {"float"} and value["float"] in ("inf", "-inf", "nan"):
            return float(value["float"])
        return {k: decode_config(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_config(v) for v in value]
    return value


def parse_manifest(raw: bytes, path: Path) -> dict[str, Any]:
    """A manifest's bytes as a checked JSON object: the format, its version and its own content hash,
    then the fields of a single-engine or a two-expert manifest."""
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path}: not valid JSON ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format is {data.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    if data.get("format_version") not in READ_VERSIONS:
        raise BundleError(
            f"{path}: format_version {data.get('format_version')!r}; this rfcache reads "
            f"{' and '.join(map(str, READ_VERSIONS))}"
        )
    if data.get("content_sha256") != content_hash(data):
        raise BundleError(f"{path}: content_sha256 does not match its content; the manifest was altered")
    if is_expert_manifest(data):
        validate_experts(data, path)
    else:
        validate_engine(data, path)
    return data


def kind_graph(kind: int) -> str:
    """The graph name of step kind ``kind`` in a per-unit bundle (``kind0`` is every unit computed)."""
    return f"kind{kind}"


def is_expert_manifest(data: dict[str, Any]) -> bool:
    """Whether a manifest is a two-expert pipeline's (Wan 2.2): one complete bundle per expert."""
    return "experts" in data


def validate_engine(data: dict[str, Any], path: Path) -> None:
    """A single-engine manifest: everything a runner reads, checked once."""
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise BundleError(f"{path}: field {key!r} missing or not a {kind.__name__}")
    _validate_schedule(data, path)  # first: a per-unit schedule says which step graphs there are
    _validate_graphs(data, path)
    _validate_axes(data, path)
    _validate_sampling(data, path)


def validate_experts(data: dict[str, Any], path: Path) -> None:
    """The ``experts`` list of a two-expert bundle's manifest: components, contiguous steps, sub-folders."""
    experts, schedule = data.get("experts"), data.get("schedule")
    if not isinstance(experts, list) or len(experts) != 2 or not isinstance(schedule, dict):
        raise BundleError(f"{path}: experts must be a list of two entries, with a schedule")
    mask = schedule.get("mask")
    start = 0
    for i, entry in enumerate(experts):
        ok = isinstance(entry, dict) and isinstance(entry.get("component"), str)
        steps = entry.get("steps") if ok else None
        ok = ok and isinstance(steps, list) and len(steps) == 2 and all(type(s) is int for s in steps)
        ok = ok and steps[0] == start and steps[0] < steps[1] and isinstance(entry.get("bundle"), str)
        ok = ok and entry["bundle"] == entry["component"]  # a plain sub-folder name, never a path
        if not ok:
            raise BundleError(
                f"{path}: experts[{i}] must have a component, steps [{start}, stop] and its bundle folder"
            )
        start = steps[1]
    if not isinstance(mask, str) or start != len(mask):
        raise BundleError(f"{path}: the experts' steps must cover the schedule's {len(mask or '')} steps")


def _validate_graphs(data: dict[str, Any], path: Path) -> None:
    graphs = data["graphs"]
    kinds = data["schedule"].get("kinds")
    steps = [kind_graph(i) for i in range(len(kinds))] if kinds is not None else ["full", "cached"]
    for name in steps:
        if name not in graphs:
            raise BundleError(f"{path}: graphs.{name} missing")
    others = {"full", "cached", *(n for n in graphs if n.startswith("kind"))} - set(steps)
    if others & set(graphs):
        raise BundleError(f"{path}: graphs.{sorted(others & set(graphs))[0]} is not a step graph of this schedule")
    for name, graph in graphs.items():
        graph_spec(graph, name)
    for i, state in enumerate(data["state"]):
        try:
            spec = _tensor_spec(state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{path}: state[{i}] malformed ({first_line(exc)})") from None
        if spec.shape[:1] != ("batch",) or spec.dtype not in _DTYPES:
            raise BundleError(f"{path}: state[{i}] must have a leading 'batch' axis and a float dtype")


def _validate_axes(data: dict[str, Any], path: Path) -> None:
    graphs = data["graphs"]
    text = data["axes"].get("text")
    fields = {"tokens": int, "inputs": dict, "dynamic": bool}
    if text is not None and (
        not isinstance(text, dict)
        or set(text) - {*fields, "reason"}
        or not all(isinstance(text.get(k), kind) for k, kind in fields.items())
        or not all(isinstance(a, int) and not isinstance(a, bool) for a in text["inputs"].values())
    ):
        raise BundleError(f"{path}: axes.text must be an object with tokens, inputs (name: axis), dynamic, reason")
    shapes = [t["shape"] for g in graphs.values() for t in (*g["inputs"], *g["outputs"])]
    shapes += [s["shape"] for s in data["state"]]
    if any(str(d).startswith("text") for shape in shapes for d in shape) and not (text and text["dynamic"]):
        raise BundleError(f"{path}: shapes name a text axis, but axes.text is not dynamic")


def _validate_schedule(data: dict[str, Any], path: Path) -> None:
    predictor = data["predictor"]
    if predictor.get("kind") not in ("reuse", "taylor", "relational") or predictor.get("order") not in (0, 1, 2):
        raise BundleError(f"{path}: predictor must have kind reuse|taylor|relational and order 0, 1 or 2")
    schedule = data["schedule"]
    pattern, mask = schedule.get("pattern"), schedule.get("mask")
    if not (isinstance(pattern, str) and isinstance(mask, str) and pattern and len(pattern) == len(mask)):
        raise BundleError(f"{path}: schedule.pattern and schedule.mask must be strings of equal length")
    if set(pattern) - {"C", "P"} or not pattern.startswith("C"):
        raise BundleError(f"{path}: schedule.pattern must be C/P letters starting with C")
    fraction = schedule.get("flops_fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise BundleError(f"{path}: schedule.flops_fraction must be a number in (0, 1]")
    per_unit = data["format_version"] == PER_UNIT_VERSION
    fields = {"units", "kinds", "step_kinds"}
    if not per_unit and fields & set(schedule):
        first = sorted(fields & set(schedule))[0]
        raise BundleError(f"{path}: schedule.{first} needs format_version {PER_UNIT_VERSION}")
    if per_unit:
        _validate_kinds(schedule, data.get("model"), path)


def _validate_kinds(schedule: dict[str, Any], model: Any, path: Path) -> None:
    """A per-unit bundle's schedule: its units, its step kinds (C/P per unit) and each step's kind."""
    units, kinds, steps = schedule.get("units"), schedule.get("kinds"), schedule.get("step_kinds")
    pattern = schedule["pattern"]
    count = model.get("num_units") if isinstance(model, dict) else None
    if not (isinstance(units, list) and units and all(isinstance(u, str) and u for u in units)) or len(
        set(units)
    ) != len(units):
        raise BundleError(f"{path}: schedule.units must be a list of distinct unit paths")
    if count != len(units):
        raise BundleError(f"{path}: schedule.units names {len(units)} units, model.num_units is {count!r}")
    if not (
        isinstance(kinds, list)
        and kinds
        and all(isinstance(k, str) and len(k) == len(units) and not set(k) - {"C", "P"} for k in kinds)
        and len(set(kinds)) == len(kinds)
    ):
        raise BundleError(f"{path}: schedule.kinds must be distinct strings of C/P, one letter per unit")
    if not (
        isinstance(steps, list)
        and len(steps) == len(pattern)
        and all(type(k) is int and 0 <= k < len(kinds) for k in steps)
    ):
        raise BundleError(f"{path}: schedule.step_kinds must give each of the {len(pattern)} steps a kind's index")
    first_use = list(dict.fromkeys(steps))
    if first_use != list(range(len(kinds))) or set(kinds[0]) != {"C"}:
        raise BundleError(f"{path}: schedule.kinds must be in order of first use, the first one every unit computed")
    for step, (kind, letter) in enumerate(zip(steps, pattern, strict=True)):
        if (letter == "C") != (set(kinds[kind]) == {"C"}):
            raise BundleError(f"{path}: schedule.pattern step {step} is {letter}, its kind is {kinds[kind]}")


def _validate_sampling(data: dict[str, Any], path: Path) -> None:
    pattern = data["schedule"]["pattern"]
    sampling = data["sampling"]
    recipe = sampling.get("recipe")
    if recipe == "class-conditional":
        for key, kind in _CLASS_CONDITIONAL.items():
            value = sampling.get(key)
            if isinstance(value, bool) or not isinstance(value, kind):
                expected = "a number" if isinstance(kind, tuple) else f"a {kind.__name__}"
                raise BundleError(f"{path}: sampling.{key} missing or not {expected}")
        if sampling["num_steps"] != len(pattern):
            raise BundleError(f"{path}: sampling.num_steps {sampling['num_steps']} != {len(pattern)} schedule steps")
    elif recipe != "transformer-only":
        raise BundleError(f"{path}: sampling.recipe {recipe!r} is not class-conditional or transformer-only")


_DTYPES = ("float32", "float16", "bfloat16")
_CLASS_CONDITIONAL: dict[str, Any] = {
    "null_class": int,
    "num_classes": int,
    "in_channels": int,
    "sample_size": int,
    "num_steps": int,
    "guidance_scale": (int, float),
    "scheduler": dict,
}


_REQUIRED: dict[str, type] = {
    "axes": dict,
    "backend": str,
    "graphs": dict,
    "schedule": dict,
    "sampling": dict,
    "predictor": dict,
    "state": list,
    "files": dict,
    "versions": dict,
}


def graph_spec(data: Any, name: str) -> GraphSpec:
    """One ``graphs`` entry of a manifest as a :class:`GraphSpec`."""
    where = f"{MANIFEST}: graphs.{name}"
    if not isinstance(data, dict) or not isinstance(data.get("file"), str):
        raise BundleError(f"{where}: expected an object with a 'file' string")
    try:
        return GraphSpec(
            data["file"],
            tuple(_tensor_spec(t) for t in data["inputs"]),
            tuple(_tensor_spec(t) for t in data["outputs"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{where}: malformed input/output list ({first_line(exc)})") from None


def _tensor_spec(data: dict[str, Any]) -> TensorSpec:
    if not isinstance(data, dict) or not isinstance(data.get("shape"), list):
        raise TypeError("expected an object with name, shape (a list) and dtype")
    shape = tuple(data["shape"])
    if not isinstance(data["name"], str) or not isinstance(data["dtype"], str):
        raise TypeError("name and dtype must be strings")
    if not all((isinstance(d, int) and not isinstance(d, bool) and d >= 0) or _symbol(d) for d in shape):
        raise ValueError(f"shape {list(shape)} of {data['name']!r}")
    return TensorSpec(data["name"], shape, data["dtype"])


def _symbol(d: Any) -> bool:
    return isinstance(d, str) and re.fullmatch(r"batch|steps|text(\+[0-9]+)?", d) is not None


def content_hash(manifest: dict[str, Any]) -> str:
    """The sha256 of a manifest's content without its own ``content_sha256`` ("" where it is not strict JSON)."""
    body = {k: v for k, v in manifest.items() if k != "content_sha256"}
    try:
        text = json.dumps(body, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return ""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def first_line(exc: BaseException) -> str:
    """An exception's first message line (its type name when it has none), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
