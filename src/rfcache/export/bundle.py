"""The engine-bundle format: graphs, the profile and a manifest, checked file by file on load.

A bundle is a folder::

    manifest.json        format version, versions, graphs' input/output names and shapes, the
                         schedule, the sampler's configuration, a sha256 for every other file
    profile.yaml         the profile the bundle was made from
    full.onnx(.data)     the full-step graph (+ external weights)
    cached.onnx(.data)   the cached-step graph (+ the skeleton's weights)
    *.plan               TensorRT engines, when built

Nothing in it is executed as code: the manifest is JSON, the profile is read with a safe loader,
graphs are ONNX protobufs. Loading verifies every hash and refuses a missing, altered or extra
file, and a manifest edited after it was written (its own content hash).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfcache.errors import RfcacheError
from rfcache.outputs import check_folder_output, replace_folder
from rfcache.schedules import Profile, ProfileError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "MANIFEST",
    "Bundle",
    "BundleError",
    "GraphSpec",
    "TensorSpec",
    "TextAxis",
    "first_line",
    "resolve_shape",
]

BUNDLE_FORMAT = "rfcache-bundle"
BUNDLE_VERSION = 3  # 3: the text token axis (``axes.text``; ``"text"`` / ``"text+K"`` in shapes)
MANIFEST = "manifest.json"
PROFILE = "profile.yaml"
_MAX_MANIFEST_BYTES = 16 << 20


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


@dataclass(frozen=True)
class Bundle:
    """A verified bundle folder: the manifest's content and the profile, ready for a runner."""

    path: Path
    manifest: dict[str, Any]
    profile: Profile

    @property
    def graphs(self) -> dict[str, GraphSpec]:
        return {name: _graph_spec(g, name) for name, g in self.manifest["graphs"].items()}

    @property
    def pattern(self) -> str:
        """The executed compute/predict pattern, one letter per step (``C`` full, ``P`` cached)."""
        return self.manifest["schedule"]["pattern"]

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "fp32")

    @property
    def sampling(self) -> dict[str, Any]:
        return self.manifest["sampling"]

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def setup(self) -> dict[str, Any]:
        """What the bundle was exported for (pipeline, size, frames, guidance, call arguments); {} if not recorded."""
        return self.manifest.get("setup", {})

    @property
    def text_axis(self) -> TextAxis | None:
        """The graphs' text token axis; None for a model without text inputs."""
        text = self.manifest["axes"].get("text")
        return None if text is None else TextAxis(**text)

    def into(self, pipe: Any, *, device: str = "cpu", threads: int | None = None) -> Any:
        """Put the bundle in place of ``pipe.transformer``: the pipeline's text encoders, scheduler loop
        and VAE run as usual, each transformer step runs from the engine with the baked schedule.
        A two-expert bundle (Wan 2.2) replaces ``transformer`` and ``transformer_2``, each with its engine.

        Example:
            >>> pipe = rfcache.load_pipeline("./my-flux")
            >>> rfcache.load_bundle("flux-bundle/").into(pipe)
            >>> image = pipe("a red fox", generator=torch.Generator().manual_seed(0)).images[0]
        """
        from rfcache.export.engine import put_bundle

        if "experts" not in self.manifest:
            return put_bundle(self, pipe, device=device, threads=threads)
        from rfcache.export.experts import expert_bundles
        from rfcache.runtime.experts import check_profile_experts

        check_profile_experts(self.profile, pipe)
        for component, first_step, bundle in expert_bundles(self):
            put_bundle(bundle, pipe, device=device, threads=threads, component=component, first_step=first_step)
        return pipe

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Bundle:
        """Open and verify a bundle folder; any problem is one :class:`BundleError` line."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"{root}: not a bundle folder (expected a directory with {MANIFEST})")
        manifest = _read_manifest(root)
        _verify_files(root, manifest)
        try:
            profile = Profile.from_yaml((root / PROFILE).read_text(encoding="utf-8"), source=str(root / PROFILE))
        except ProfileError as exc:
            raise BundleError(str(exc)) from None
        if profile.schedule != manifest["schedule"]["mask"]:
            raise BundleError(f"{root / MANIFEST}: schedule.mask does not match {PROFILE}'s schedule")
        return cls(root, manifest, profile)


def write_bundle(out: str | os.PathLike[str], fill: Callable[[Path], dict[str, Any]], *, force: bool = False) -> Path:
    """Build a bundle in a temporary sibling folder and rename it to ``out`` when complete.

    ``fill(folder)`` writes the graphs and the profile into ``folder`` and returns the manifest
    without its ``files`` and ``content_sha256``, which are added here.
    """
    out = check_folder_output(out, flag="--out", force=force)  # before any work; replaced only if a bundle
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest = fill(tmp)
        manifest["files"] = {
            str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != MANIFEST
        }
        manifest["content_sha256"] = _content_hash(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n")
        replace_folder(tmp, out, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing; {root} is not a complete bundle")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: larger than {_MAX_MANIFEST_BYTES} bytes; not a manifest")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path}: not valid JSON ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format is {data.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    if data.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{path}: format_version {data.get('format_version')!r}; this rfcache reads {BUNDLE_VERSION}")
    if data.get("content_sha256") != _content_hash(data):
        raise BundleError(f"{path}: content_sha256 does not match its content; the manifest was altered")
    if "experts" in data:  # a two-expert pipeline's bundle: one complete bundle per expert (experts.py)
        from rfcache.export.experts import validate_experts

        validate_experts(data, path)
        return data
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise BundleError(f"{path}: field {key!r} missing or not a {kind.__name__}")
    _validate(data, path)
    return data


def _validate(data: dict[str, Any], path: Path) -> None:
    """Everything a runner reads, checked once, so a bad manifest fails here with one line."""
    graphs = data["graphs"]
    for name in ("full", "cached"):
        if name not in graphs:
            raise BundleError(f"{path}: graphs.{name} missing")
    for name, graph in graphs.items():
        _graph_spec(graph, name)
    for i, state in enumerate(data["state"]):
        try:
            spec = _tensor_spec(state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"{path}: state[{i}] malformed ({first_line(exc)})") from None
        if spec.shape[:1] != ("batch",) or spec.dtype not in _DTYPES:
            raise BundleError(f"{path}: state[{i}] must have a leading 'batch' axis and a float dtype")
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


def _verify_files(root: Path, manifest: dict[str, Any]) -> None:
    listed: dict[str, Any] = manifest["files"]
    present = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST}
    missing = sorted(set(listed) - present)
    if missing:
        raise BundleError(f"{root}: file {missing[0]} is listed in {MANIFEST} but missing")
    extra = sorted(present - set(listed))
    if extra:
        raise BundleError(f"{root}: file {extra[0]} is not part of the bundle (not in {MANIFEST})")
    for name, digest in sorted(listed.items()):
        if _sha256(root / name) != digest:
            raise BundleError(f"{root / name}: sha256 does not match {MANIFEST}; the file was altered")
    for graph in manifest.get("graphs", {}).values():  # none at the top of a two-expert bundle
        if graph["file"] not in listed:
            raise BundleError(f"{root / MANIFEST}: graph file {graph['file']!r} is not among the bundle's files")


def _graph_spec(data: Any, name: str) -> GraphSpec:
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


def _content_hash(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "content_sha256"}
    try:
        text = json.dumps(body, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return ""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def first_line(exc: BaseException) -> str:
    """An exception's first message line (its type name when it has none), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
