"""`Profile`: the calibrated artefact, one YAML file per model, step count and scheduler.

A profile is a frozen dataclass that round-trips YAML losslessly: keys in field order, floats
written with Python's shortest round-tripping repr, the schema version in every file. Loading is
strict: a safe YAML loader only, unknown keys, missing keys, wrong types, non-finite numbers and a
schedule of the wrong length are refused with one line naming the file and the field.
This module imports nothing of torch, so profiles can be read and checked anywhere.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import reprlib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rfcache.errors import RfcacheError
from rfcache.outputs import write_file
from rfcache.schedules.masks import min_full_steps, rows_intersection, unit_flops_fraction, warmup_violation

__all__ = [
    "RATIO_FORMS",
    "SCHEMA_VERSION",
    "Budget",
    "Expert",
    "InputItem",
    "MethodSpec",
    "ModelIdentity",
    "Profile",
    "ProfileError",
    "Provenance",
    "SamplingSetup",
    "load_profile",
    "ratio_position",
    "to_plain",
]

SCHEMA_VERSION = 1
MAX_PROFILE_BYTES = 16 * 2**20  # far above any real profile; /dev/zero and the like stop here
logger = logging.getLogger(__name__)
SHIPPED_DIR = Path(__file__).parent
RATIO_FORMS = ("constant", "step-linear")  # how a calibrated relation ratio depends on the step


class ProfileError(RfcacheError, ValueError):
    """A profile file is malformed, or does not match the model or sampling setup it is used with."""


@dataclass(frozen=True)
class ModelIdentity:
    """Which transformer a profile was calibrated on."""

    family: str
    class_name: str
    config_hash: str
    num_units: int
    granularity: str = "module"


@dataclass(frozen=True)
class SamplingSetup:
    """How the pipeline sampled during calibration; a profile only fits the same setup."""

    scheduler: str
    num_steps: int
    guidance: str  # "cfg" (batched or sequential), "embedded" (a transformer input, FLUX.1-dev) or "none"
    resolution: tuple[int, ...]  # the transformer input's shape without the batch axis, e.g. (4, 8, 8)
    scheduler_config_hash: str = ""
    # the run's setup (0 / empty: the pipeline's default, or a profile written before they were recorded)
    guidance_scale: float = 0.0
    height: int = 0
    width: int = 0
    num_frames: int = 0
    text_tokens: int = 0  # max_sequence_length the text was padded to
    call_args: dict[str, str] = field(default_factory=dict)  # other pipeline keywords, values as JSON
    # two-expert pipelines (Wan 2.2): the first step the second transformer runs; None: one transformer
    boundary_step: int | None = None


@dataclass(frozen=True)
class Expert:
    """One transformer of a multi-expert pipeline (Wan 2.2's ``transformer`` and ``transformer_2``):
    the pipeline component, its identity, the steps ``[first, stop)`` it runs and its fitted ratios."""

    component: str
    model: ModelIdentity
    steps: tuple[int, ...]
    ratios: tuple[float, ...] = ()
    ratio_slopes: tuple[float, ...] = ()


@dataclass(frozen=True)
class MethodSpec:
    """The predictor and the schedule family the search picked, with its parameters."""

    predictor: str
    order: int
    schedule_family: str
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Budget:
    target: float
    achieved: float


@dataclass(frozen=True)
class InputItem:
    """One calibration input: its seed and a prompt or a class label (``{seed, prompt}`` / ``{seed, label}``)."""

    seed: int
    prompt: str | None = None
    label: int | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.label is None):
            raise ProfileError(f"an input item needs exactly one of prompt and label (seed {self.seed})")


@dataclass(frozen=True)
class Provenance:
    """Where a profile came from. ``inputs``: the disjoint ``calibration``, ``selection`` and ``test``
    sets (empty in profiles made before they were recorded); ``dtype``: the transformer's while calibrating."""

    inputs_hash: str
    seed: int
    trials: int
    created: str
    versions: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, tuple[InputItem, ...]] = field(default_factory=dict)
    dtype: str | None = None  # the transformer's dtype while calibrating ("bfloat16", ...); None: not recorded


@dataclass(frozen=True)
class Profile:
    """A static compute/predict schedule with its coefficients and where it came from.

    ``schedule`` holds one character per step, ``C`` (full) or ``P`` (predicted);
    ``ratios`` holds the fitted relation ratio ``s`` per unit; RFE uses them in place of the
    run-time ratio when ``method.params["calibrated"]`` is 1. ``ratio_form`` says how ``s`` depends
    on the step: ``constant`` (``s = ratios[u]``) or ``step-linear``
    (``s(step) = ratios[u] + ratio_slopes[u] * ratio_position(step, num_steps)``, so ``ratios`` is
    the value at mid-trajectory and ``s`` stays >= 0 at every step).

    ``experts`` (two-expert pipelines only, else None and not written): one entry per transformer
    with the steps it runs; ``schedule`` covers the whole trajectory and each expert replays its own
    steps of it with its own ratios (:meth:`for_expert`). ``model`` is then the first expert's, and
    the top-level ``ratios``/``ratio_slopes`` are empty.

    Per-unit schedules (None and not written for a one-mask profile): ``unit_schedules`` maps each
    unit path (``transformer_blocks.3.attn1``, the adapter's) or a group name of ``unit_groups`` to
    its own ``C``/``P`` row over all steps; every unit is named exactly once, and ``schedule`` is
    then the rows' intersection (the steps on which every unit is computed). ``unit_costs`` (unit
    path -> analytic FLOPs per step, any common scale) weighs the rows in :meth:`computed_fraction`.
    """

    name: str
    model: ModelIdentity
    sampling: SamplingSetup
    method: MethodSpec
    schedule: str
    budget: Budget
    provenance: Provenance
    ratios: tuple[float, ...] = ()
    ratio_form: str = "constant"
    ratio_slopes: tuple[float, ...] = ()
    quality: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, float] = field(default_factory=dict)
    experts: tuple[Expert, ...] | None = None
    unit_schedules: dict[str, str] | None = None
    unit_groups: dict[str, tuple[str, ...]] | None = None
    unit_costs: dict[str, float] | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def mask(self) -> tuple[bool, ...]:
        """Per step: True where every unit is computed."""
        return tuple(c == "C" for c in self.schedule)

    @property
    def nfc(self) -> int:
        """Number of full computations."""
        return self.schedule.count("C")

    @property
    def per_unit(self) -> bool:
        """Whether each unit (or group of units) has its own row (``unit_schedules``)."""
        return self.unit_schedules is not None

    def unit_rows(self) -> dict[str, str]:
        """Unit path -> its ``C``/``P`` row, groups expanded, in file order; empty for a one-mask profile."""
        groups = self.unit_groups or {}
        rows: dict[str, str] = {}
        for key, row in (self.unit_schedules or {}).items():
            rows.update(dict.fromkeys(groups.get(key, (key,)), row))
        return rows

    def unit_masks(self, paths: typing.Sequence[str]) -> tuple[tuple[bool, ...], ...]:
        """Each of the model's units' mask (True = computed), in the order of ``paths`` (the adapter's
        unit paths); a one-mask profile gives every unit its :attr:`mask`. Refuses, in one line, a
        per-unit profile that names a unit the model lacks or lacks one the model has."""
        if not self.per_unit:
            return tuple(self.mask for _ in paths)
        rows = self.unit_rows()
        unknown = [name for name in rows if name not in set(paths)]
        missing = [path for path in paths if path not in rows]
        if unknown or missing:
            found = f"names {unknown[0]!r}, not a unit of this model" if unknown else f"lacks unit {missing[0]!r}"
            first_last = f"{paths[0]} .. {paths[-1]}" if paths else "none"
            raise ProfileError(
                _one_line(f"profile {self.name!r}: unit_schedules {found} (the model's units: {first_last})")
            )
        return tuple(tuple(c == "C" for c in rows[path]) for path in paths)

    def computed_fraction(self) -> float:
        """The fraction of the units' full-compute FLOPs the schedule computes (predictions not counted),
        per unit weighted by ``unit_costs`` (equal weights where the profile has none)."""
        if not self.per_unit:
            return self.nfc / len(self.schedule)
        rows = self.unit_rows()
        costs = self.unit_costs or dict.fromkeys(rows, 1.0)
        return unit_flops_fraction(list(rows.values()), [costs[name] for name in rows])

    def for_expert(self, index: int) -> Profile:
        """The single-transformer profile of expert ``index``: its model and ratios, the whole schedule
        (its session starts at ``experts[index].steps[0]``); ``self`` for a one-transformer profile."""
        if self.experts is None:
            return self
        expert = self.experts[index]
        return dataclasses.replace(
            self,
            model=expert.model,
            ratios=expert.ratios,
            ratio_slopes=expert.ratio_slopes,
            sampling=dataclasses.replace(self.sampling, boundary_step=None),
            experts=None,
        )

    def step_ratios(self, step: int) -> tuple[float, ...]:
        """The fitted relation ratio ``s`` of every unit at ``step`` (0-based), in its ``ratio_form``."""
        if not self.ratio_slopes:
            return self.ratios
        position = ratio_position(step, self.sampling.num_steps)
        return tuple(a + b * position for a, b in zip(self.ratios, self.ratio_slopes, strict=True))

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data in field order, ``schema_version`` first and the per-unit rows right after ``schedule``."""
        data = to_plain(self)
        units = {k: data.pop(k) for k in _UNIT_FIELDS if k in data}
        out: dict[str, Any] = {"schema_version": data.pop("schema_version")}
        for key, value in data.items():
            out[key] = value
            if key == "schedule":
                out.update(units)
        return out

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file in the same folder, then rename), with the umask's mode."""
        text = self.to_yaml()
        return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<profile>") -> Profile:
        """Build and validate from plain data; errors name ``source`` and the field."""
        try:
            if not isinstance(data, dict):
                raise ProfileError(f"expected a mapping at the top level, got {type(data).__name__}")
            if data.get("schema_version") != SCHEMA_VERSION:
                raise ProfileError(f"schema_version must be {SCHEMA_VERSION}, got {_show(data.get('schema_version'))}")
            return _from_plain(cls, data, "")
        except ProfileError as exc:
            raise ProfileError(_one_line(f"{source}: {exc}")) from None

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<profile>") -> Profile:
        """Parse with YAML's safe loader (no tags that construct objects), then :meth:`from_dict`."""
        try:
            data = yaml.load(text, Loader=_Loader)  # a SafeLoader: no tags that construct objects
        except ProfileError as exc:
            raise ProfileError(_one_line(f"{source}: {exc}")) from None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ProfileError(_one_line(f"{source}: not valid YAML ({first})")) from None
        except RecursionError:  # the YAML composer recurses once per nesting level
            raise ProfileError(_one_line(f"{source}: not valid YAML (nested too deeply)")) from None
        except Exception as exc:  # a safe constructor fed a bad explicit tag, e.g. "!!float 1e-07'"
            first = (str(exc).splitlines() or [""])[0][:120]
            raise ProfileError(_one_line(f"{source}: not valid YAML ({type(exc).__name__}: {first})")) from None
        return cls.from_dict(data, source=source)

    # -- matching ------------------------------------------------------------------------------

    def check_model(self, identity: ModelIdentity) -> None:
        """Refuse a profile made for another model, naming the first field that differs."""
        _check_equal(self.model, identity, "model", self.name)

    def check_sampling(
        self,
        *,
        scheduler: str | None = None,
        num_steps: int | None = None,
        resolution: tuple[int, ...] | None = None,
        guidance: str | None = None,
        guidance_scale: float | None = None,
    ) -> None:
        """Refuse another scheduler, step count, resolution or guidance mode, naming which; ``None``
        is not checked. A different guidance *scale* (same mode) is allowed with a logged warning."""
        expected = self.sampling
        for name, found, wanted in (
            ("scheduler", scheduler, expected.scheduler),
            ("num_steps", num_steps, expected.num_steps),
            ("resolution", None if resolution is None else tuple(resolution), tuple(expected.resolution)),
            ("guidance", guidance, expected.guidance),
        ):
            if found is not None and found != wanted and (name != "resolution" or wanted):
                raise ProfileError(f"profile {self.name!r} is for sampling.{name}={wanted!r}, got {found!r}")
        if guidance_scale is not None and expected.guidance_scale and guidance_scale != expected.guidance_scale:
            logger.warning(
                "profile %r was calibrated at guidance scale %g; running at %g (the schedule may fit less well)",
                self.name,
                expected.guidance_scale,
                guidance_scale,
            )

    def check_setup(self, found: SamplingSetup) -> None:
        """Refuse a run whose setup changes the trajectory: :meth:`check_sampling` on every recorded
        field, and the size (height, width, frames) where both sides name it."""
        self.check_sampling(
            scheduler=found.scheduler,
            num_steps=found.num_steps,
            resolution=found.resolution or None,
            guidance=found.guidance,
            guidance_scale=found.guidance_scale or None,
        )
        for name in ("height", "width", "num_frames"):
            wanted, got = getattr(self.sampling, name), getattr(found, name)
            if wanted and got and wanted != got:
                raise ProfileError(f"profile {self.name!r} is for sampling.{name}={wanted!r}, got {got!r}")
        if self.sampling.boundary_step != found.boundary_step:
            raise ProfileError(
                f"profile {self.name!r} is for {_experts_text(self.sampling.boundary_step)}, "
                f"this pipeline has {_experts_text(found.boundary_step)}"
            )


def load_profile(name_or_path: str | Path) -> Profile:
    """Read a profile from a YAML file, or a shipped one by name (``"toy-b0.4"``)."""
    path = Path(name_or_path)
    if not path.exists() and not str(name_or_path).endswith((".yaml", ".yml")):
        shipped = SHIPPED_DIR / f"{name_or_path}.yaml"
        if shipped.is_file():
            path = shipped
        else:
            names = ", ".join(sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))) or "none"
            raise ProfileError(f"no profile file or shipped profile named {str(name_or_path)!r} (shipped: {names})")
    try:
        if not path.is_file():
            raise ProfileError(f"{path}: not a regular file (expected a profile YAML file)")
        with path.open("rb") as f:
            data = f.read(MAX_PROFILE_BYTES + 1)
        if len(data) > MAX_PROFILE_BYTES:
            raise ProfileError(f"{path}: larger than {MAX_PROFILE_BYTES} bytes; not a profile")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(_one_line(f"{path}: cannot read ({type(exc).__name__}: {exc})")) from None
    return Profile.from_yaml(text, source=str(path))


def _experts_text(boundary_step: int | None) -> str:
    if boundary_step is None:
        return "one transformer"
    return f"two experts switching at step {boundary_step} (sampling.boundary_step)"


def ratio_position(step: int, num_steps: int) -> float:
    """Where ``step`` lies on a trajectory of ``num_steps`` for a step-linear ratio: ``step / (S - 1) - 1/2``."""
    return step / max(num_steps - 1, 1) - 0.5


# -- strict conversion -----------------------------------------------------------------------------


_UNIT_FIELDS = ("unit_schedules", "unit_groups", "unit_costs")


def _validate(p: Profile) -> None:
    if not p.schedule or set(p.schedule) - {"C", "P"}:
        raise ProfileError(f"schedule must be a non-empty string of C and P, got {_show(p.schedule)}")
    if p.schedule[0] != "C":
        raise ProfileError(
            f"schedule must start with C (nothing is cached before the first step), got {_show(p.schedule)}"
        )
    if len(p.schedule) != p.sampling.num_steps:
        raise ProfileError(f"schedule has {len(p.schedule)} steps, sampling.num_steps is {_show(p.sampling.num_steps)}")
    if p.unit_schedules is not None or p.unit_groups is not None or p.unit_costs is not None:
        _validate_units(p)
    if p.experts is not None or p.sampling.boundary_step is not None:
        _validate_experts(p)
    _refuse_warmup("schedule", p.schedule, p)  # what the runtime executes is the schedule as written
    if p.ratios and len(p.ratios) != p.model.num_units:
        raise ProfileError(f"ratios has {len(p.ratios)} entries, model.num_units is {_show(p.model.num_units)}")
    if any(r < 0 for r in p.ratios):
        raise ProfileError("ratios must be >= 0")
    _validate_ratio_form(p)
    if not 0 < p.budget.target <= 1:
        raise ProfileError(f"budget.target must be in (0, 1], got {p.budget.target}")
    if p.method.predictor not in ("reuse", "taylor", "relational"):
        raise ProfileError("method.predictor must be reuse, taylor or relational")
    if p.method.order not in (0, 1, 2):
        raise ProfileError(f"method.order must be 0, 1 or 2, got {p.method.order}")
    if p.model.granularity not in ("module", "block"):
        raise ProfileError(f"model.granularity must be module or block, got {_show(p.model.granularity)}")
    if p.sampling.guidance not in ("none", "cfg", "embedded"):
        raise ProfileError(f"sampling.guidance must be none, cfg or embedded, got {_show(p.sampling.guidance)}")
    if p.sampling.num_steps < 1 or p.model.num_units < 1:
        raise ProfileError("sampling.num_steps and model.num_units must be >= 1")
    if p.provenance.inputs and sorted(p.provenance.inputs) != ["calibration", "selection", "test"]:
        found = ", ".join(sorted(p.provenance.inputs))
        raise ProfileError(f"provenance.inputs must hold calibration, selection and test, got {found}")
    seeds = [item.seed for items in p.provenance.inputs.values() for item in items]
    if len(seeds) != len(set(seeds)):
        raise ProfileError("provenance.inputs: a seed repeats across the input sets")


def _validate_experts(p: Profile) -> None:
    experts, boundary = p.experts or (), p.sampling.boundary_step
    if len(experts) != 2 or boundary is None:
        found = f"{_show(boundary)} and {len(experts)}"
        raise ProfileError(f"a two-expert profile needs sampling.boundary_step and two experts, got {found}")
    components = [e.component for e in experts]
    if len(set(components)) != len(components):
        raise ProfileError(f"experts: a component repeats ({', '.join(components)})")
    expected = [(0, boundary), (boundary, p.sampling.num_steps)]
    for i, (expert, (first, stop)) in enumerate(zip(experts, expected, strict=True)):
        if expert.steps != (first, stop) or first >= stop:
            raise ProfileError(
                f"experts[{i}].steps must be [{first}, {stop}] (sampling.boundary_step {boundary} of "
                f"{p.sampling.num_steps} steps, each expert at least one), got {_show(list(expert.steps))}"
            )
        if p.schedule[first] != "C":
            raise ProfileError(f"schedule: step {first}, expert {expert.component}'s first step, must be C (full)")
    if p.model != experts[0].model:
        raise ProfileError("model must be experts[0].model (the first expert's identity)")
    if p.ratios or p.ratio_slopes:
        raise ProfileError("ratios and ratio_slopes belong in each expert of a two-expert profile, not at the top")
    for i in range(len(experts)):
        try:
            p.for_expert(i)
        except ProfileError as exc:
            raise ProfileError(f"experts[{i}]: {exc}") from None


def _refuse_warmup(where: str, row: str, p: Profile) -> None:
    """Refuse a row whose transformer's first step is not C, or that has a P before the predictor's
    full steps (RFE needs two) from each transformer's first step: the runtime would compute it
    instead (:func:`~rfcache.schedules.masks.runs_full`), so the file would not say what runs."""
    # each transformer's first step (the experts' steps may be checked after this: only in-range ones count)
    starts = sorted({0} | {e.steps[0] for e in p.experts or () if e.steps and 0 <= e.steps[0] < p.sampling.num_steps})
    min_full = min_full_steps(p.method.predictor)
    for start in starts:
        if row[start] != "C":
            raise ProfileError(f"{where}: step {start}, the first step of its transformer, must be C (full)")
        bad = warmup_violation(row, min_full, start)
        if bad is not None:
            raise ProfileError(
                f"{where}: step {bad} is P before the {p.method.predictor} predictor's {min_full} full steps; "
                "it would be computed: make it C"
            )


def _validate_units(p: Profile) -> None:
    """Per-unit rows: each unit named once, full length, computed first, the warm-up kept (per expert)."""
    if not p.unit_schedules:
        raise ProfileError("unit_groups and unit_costs need unit_schedules (one C/P row per unit or group)")
    groups = p.unit_groups or {}
    for key, row in p.unit_schedules.items():
        where = f"unit_schedules.{key}"
        if not row or set(row) - {"C", "P"}:
            raise ProfileError(f"{where} must be a string of C and P, got {_show(row)}")
        if len(row) != p.sampling.num_steps:
            raise ProfileError(f"{where} has {len(row)} steps, sampling.num_steps is {_show(p.sampling.num_steps)}")
        _refuse_warmup(where, row, p)
    named: dict[str, str] = {}
    for key in p.unit_schedules:
        for unit in groups.get(key, (key,)):
            if not unit:
                raise ProfileError(f"unit_schedules: an empty unit name (in {_show(key)})")
            if unit in named:
                raise ProfileError(f"unit {_show(unit)} is named twice (in {named[unit]} and {_show(key)})")
            named[unit] = _show(key)
    for name, members in groups.items():
        if name not in p.unit_schedules:
            raise ProfileError(f"unit_groups.{name} has no row in unit_schedules")
        if not members:
            raise ProfileError(f"unit_groups.{name} must name at least one unit")
    if len(named) != p.model.num_units:
        raise ProfileError(f"unit_schedules names {len(named)} units, model.num_units is {_show(p.model.num_units)}")
    rows = list(p.unit_schedules.values())
    if p.schedule != rows_intersection(rows):
        raise ProfileError(
            f"schedule must be the steps every unit computes ({rows_intersection(rows)}), got {_show(p.schedule)}"
        )
    if p.unit_costs is not None:
        extra = sorted(set(p.unit_costs) - set(named))
        lacking = [u for u in named if u not in p.unit_costs]
        if extra or lacking:
            found = f"names {_show(extra[0])}, not a unit" if extra else f"lacks {_show(lacking[0])}"
            raise ProfileError(f"unit_costs {found} of unit_schedules")
        bad = [u for u, c in p.unit_costs.items() if not c > 0]
        if bad:
            raise ProfileError(f"unit_costs.{bad[0]} must be > 0, got {_show(p.unit_costs[bad[0]])}")


def _validate_ratio_form(p: Profile) -> None:
    if p.ratio_form not in RATIO_FORMS:
        raise ProfileError(f"ratio_form must be one of {', '.join(RATIO_FORMS)}, got {_show(p.ratio_form)}")
    if p.experts is not None:  # each expert's ratios are checked in its own profile
        return
    if p.ratio_form == "constant" and p.ratio_slopes:
        raise ProfileError("ratio_slopes must be empty when ratio_form is constant")
    if p.ratio_form == "step-linear":
        if not p.ratios or len(p.ratio_slopes) != len(p.ratios):
            found = f"{len(p.ratio_slopes)} slopes for {len(p.ratios)} ratios"
            raise ProfileError(f"ratio_form step-linear needs one ratio_slopes entry per ratio, got {found}")
        negative = [u for u, (a, b) in enumerate(zip(p.ratios, p.ratio_slopes, strict=True)) if a - abs(b) / 2 < 0]
        if negative:
            raise ProfileError(f"ratio_slopes[{negative[0]}]: the step-linear ratio turns negative (|slope| > 2 ratio)")


def to_plain(obj: Any) -> Any:
    """A profile's dataclasses (or any part of one) as the plain dicts, lists and scalars its YAML holds:
    tuples become lists, optional fields left at None are left out, numpy scalars become Python's."""
    if dataclasses.is_dataclass(obj):  # optional fields left at None are not written
        fields = [f for f in dataclasses.fields(obj) if not (f.default is None and getattr(obj, f.name) is None)]
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields}
    if isinstance(obj, tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    for plain in (bool, int, float, str):  # subclasses (numpy scalars, torch's version string) as plain
        if isinstance(obj, plain):
            return plain(obj)
    return obj


def _from_plain(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ProfileError(f"{where or 'profile'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ProfileError(f"unknown key(s) {', '.join(unknown)} in {where or 'profile'}")
    values = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProfileError(f"missing key {path}")
            continue
        values[name] = _convert(hints[name], data[name], path)
    return cls(**values)


def _convert(kind: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        return _from_plain(kind, value, path)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(inner, value, path)
    if origin is tuple:
        if not isinstance(value, list):
            raise ProfileError(f"{path} must be a list, got {type(value).__name__}")
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        return tuple(_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ProfileError(f"{path} must be a mapping, got {type(value).__name__}")
        _, item = typing.get_args(kind)
        return {str(k): _convert(item, v, f"{path}.{k}") for k, v in value.items()}
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProfileError(f"{path} must be a number, got {_show(value)}")
        if (isinstance(value, int) and abs(value) > sys.float_info.max) or not math.isfinite(value):
            raise ProfileError(f"{path} must be finite, got {_show(value)}")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileError(f"{path} must be an integer, got {_show(value)}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ProfileError(f"{path} must be a string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported field type {kind!r} at {path}")  # a bug in this module, not bad input


def _show(value: Any, limit: int = 80) -> str:
    """A short repr of a bad value for a message (huge or self-referencing values stay one short line)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, limit, limit, limit
    try:
        text = short.repr(value)
    except (RecursionError, ValueError):  # ValueError: ints past Python's str conversion limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(message: str) -> str:
    """Escape line breaks and other control characters (names in a message come from the file)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _check_equal(expected: Any, found: Any, where: str, name: str) -> None:
    for f in dataclasses.fields(expected):
        a, b = getattr(expected, f.name), getattr(found, f.name)
        if a != b:
            raise ProfileError(f"profile {name!r} is for {where}.{f.name}={a!r}, this model has {b!r}")


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, stricter where a profile would otherwise be misread: a key given twice is
    refused (the safe loader keeps the last), and a number such as ``1e-7`` or ``1.0e300`` is a float
    (YAML 1.1 wants a dot and a signed exponent, else reads it as a string)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # the safe constructor refuses it itself
            if key in seen:
                raise ProfileError(f"line {key_node.start_mark.line + 1}: key {_show(key)} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Dumper(yaml.SafeDumper):
    """Floats as Python's shortest round-tripping repr; short lists on one line."""


def _represent_float(dumper: yaml.SafeDumper, value: float) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:float", repr(value))


def _represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)


_Dumper.add_representer(float, _represent_float)
_Dumper.add_representer(list, _represent_list)
