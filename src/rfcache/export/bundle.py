"""Bundle folders: load and verify one, write one, hash its files.

A single-engine bundle is a folder::

    manifest.json            format version, versions, graphs' input/output names and shapes, the
                             schedule, the sampler's configuration, a sha256 for every other file
    profile.yaml             the profile the bundle was made from
    full.onnx(.data)         the full-step graph (+ external weights); ``full.pt2`` for aoti
    cached.onnx(.data)       the cached-step graph (+ the skeleton's weights); ``cached.pt2``
    kind{i}.onnx(.data)      a per-unit profile's bundle instead: one step graph per step kind
                             (which units it computes), ``kind0`` every unit (format version 4)
    conditioning.onnx(.data) every step's timestep embedding and modulation, where the model has them
    decoder.onnx(.data)      the VAE decoder, for class-conditional pipelines with a VAE
    *.plan                   TensorRT engines, when built

A two-expert bundle (Wan 2.2) holds ``manifest.json``, ``profile.yaml`` and one complete
single-engine bundle per expert in a sub-folder named after its component (``transformer/``,
``transformer_2/``); its manifest says which steps each covers and hashes every file below it.

Nothing in a bundle is executed as code: the manifest is JSON, the profile is read with a safe loader,
graphs are ONNX protobufs or AOTInductor packages. Loading verifies every hash and refuses a
missing, altered or extra file, and a manifest edited after it was written (its own content hash).
What a manifest may hold is manifest.py's; this module is the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from rfcache.export.manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    PROFILE,
    BundleError,
    GraphSpec,
    TextAxis,
    content_hash,
    graph_spec,
    is_expert_manifest,
    kind_graph,
    parse_manifest,
)
from rfcache.outputs import check_folder_output, replace_folder
from rfcache.schedules import Profile, ProfileError

__all__ = ["BundleFolder", "EngineFolder", "ExpertFolder", "read_folder", "sha256", "write_bundle"]

_F = TypeVar("_F", bound="BundleFolder")


@dataclass(frozen=True)
class BundleFolder:
    """A verified bundle folder: the manifest's content and the profile. What both kinds share."""

    path: Path
    manifest: dict[str, Any]
    profile: Profile

    experts_manifest: ClassVar[bool]  # which manifests this kind reads

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
    def setup(self) -> dict[str, Any]:
        """What the bundle was exported for (pipeline, size, frames, guidance, call arguments); {} if not recorded."""
        return self.manifest.get("setup", {})

    def file(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def load(cls: type[_F], path: str | os.PathLike[str]) -> _F:
        """Open and verify a bundle folder of this kind; any problem is one :class:`BundleError` line."""
        root, manifest, profile = _verified(path)
        if is_expert_manifest(manifest) != cls.experts_manifest:
            kind = "a two-expert" if is_expert_manifest(manifest) else "a single-engine"
            raise BundleError(f"{root}: {kind} bundle, not a {cls.__name__}; open it with rfcache.load_bundle")
        return cls(root, manifest, profile)


@dataclass(frozen=True)
class EngineFolder(BundleFolder):
    """A single-engine bundle: one transformer's graphs, what its runners read."""

    experts_manifest: ClassVar[bool] = False

    @property
    def graphs(self) -> dict[str, GraphSpec]:
        return {name: graph_spec(g, name) for name, g in self.manifest["graphs"].items()}

    @property
    def graph_names(self) -> list[str]:
        return sorted(self.graphs)

    @property
    def kinds(self) -> list[str] | None:
        """A per-unit bundle's step kinds (``C``/``P`` per unit, in the graphs' unit order); None for a
        step-mask bundle (graphs ``full`` and ``cached``)."""
        return self.manifest["schedule"].get("kinds")

    @property
    def step_kinds(self) -> list[int] | None:
        """A per-unit bundle's kind at each step (an index into :attr:`kinds`); None for a step-mask bundle."""
        return self.manifest["schedule"].get("step_kinds")

    @property
    def full_graph(self) -> str:
        """The step graph that computes every unit: ``full``, or a per-unit bundle's ``kind0``."""
        return "full" if self.kinds is None else kind_graph(0)

    @property
    def sampling(self) -> dict[str, Any]:
        return self.manifest["sampling"]

    @property
    def text_axis(self) -> TextAxis | None:
        """The graphs' text token axis; None for a model without text inputs."""
        text = self.manifest["axes"].get("text")
        return None if text is None else TextAxis(**text)


@dataclass(frozen=True)
class ExpertFolder(BundleFolder):
    """A two-expert pipeline's bundle: one complete :class:`EngineFolder` per expert."""

    experts_manifest: ClassVar[bool] = True
    member: ClassVar[type[EngineFolder]] = EngineFolder  # the kind each expert's sub-folder opens as

    @property
    def experts(self) -> list[tuple[str, int, EngineFolder]]:
        """``(component, first step, bundle)`` per expert, each verified."""
        return [
            (entry["component"], int(entry["steps"][0]), self.member.load(self.path / entry["bundle"]))
            for entry in self.manifest["experts"]
        ]

    @property
    def graph_names(self) -> list[str]:
        """Each expert's graphs as ``component/graph``."""
        return [f"{component}/{name}" for component, _, sub in self.experts for name in sorted(sub.graphs)]


def read_folder(
    path: str | os.PathLike[str],
    *,
    engine: type[EngineFolder] = EngineFolder,
    experts: type[ExpertFolder] = ExpertFolder,
) -> EngineFolder | ExpertFolder:
    """Open and verify a bundle folder as the kind its manifest says (``engine`` or ``experts``)."""
    root, manifest, profile = _verified(path)
    kind = experts if is_expert_manifest(manifest) else engine
    return kind(root, manifest, profile)


def _verified(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], Profile]:
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
    if not is_expert_manifest(manifest):
        _check_unit_rows(root, manifest["schedule"], profile)
    return root, manifest, profile


def _check_unit_rows(root: Path, schedule: dict[str, Any], profile: Profile) -> None:
    """A per-unit bundle's step kinds are its profile's rows; a step-mask bundle's profile has none."""
    kinds, steps = schedule.get("kinds"), schedule.get("step_kinds")
    if kinds is None or not profile.per_unit:
        if kinds is not None or profile.per_unit:
            which = "has no" if kinds is None else "has"
            raise BundleError(f"{root / MANIFEST}: {which} step kinds, but {PROFILE} says otherwise (per-unit or not)")
        return
    try:
        masks = profile.unit_masks(schedule["units"])
    except ProfileError as exc:
        raise BundleError(f"{root / PROFILE}: {exc}") from None
    for unit, (path, mask) in enumerate(zip(schedule["units"], masks, strict=True)):
        row = "".join(kinds[k][unit] for k in steps)
        if row != "".join("C" if m else "P" for m in mask):
            raise BundleError(f"{root / MANIFEST}: the step kinds give {path} the row {row}, {PROFILE} another")


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
            str(p.relative_to(tmp)): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != MANIFEST
        }
        manifest["content_sha256"] = content_hash(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n")
        replace_folder(tmp, out, force=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def sha256(path: Path) -> str:
    """A file's sha256, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing; {root} is not a complete bundle")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
    return parse_manifest(path.read_bytes(), path)


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
        if sha256(root / name) != digest:
            raise BundleError(f"{root / name}: sha256 does not match {MANIFEST}; the file was altered")
    for graph in manifest.get("graphs", {}).values():  # none at the top of a two-expert bundle
        if graph["file"] not in listed:
            raise BundleError(f"{root / MANIFEST}: graph file {graph['file']!r} is not among the bundle's files")
