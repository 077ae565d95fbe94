"""A per-unit bundle's manifest (format 4: ``schedule.units``, ``kinds``, ``step_kinds``), strictly checked,
and the per-unit coefficients its runner feeds; no export needed."""

import copy
import json
from pathlib import Path

import pytest

from rfcache.export.manifest import BUNDLE_FORMAT, BundleError, content_hash, parse_manifest, validate_engine
from rfcache.export.runner import unit_coefficients

PATTERN = "CCPPPC"


def per_unit_manifest() -> dict:
    """The smallest valid per-unit manifest: three units, three step kinds."""
    return {
        "format": BUNDLE_FORMAT,
        "format_version": 4,
        "axes": {"batch": {"dynamic": True}, "text": None},
        "backend": "onnx",
        "graphs": {f"kind{i}": {"file": f"kind{i}.onnx", "inputs": [], "outputs": []} for i in range(3)},
        "schedule": {
            "mask": PATTERN,
            "pattern": PATTERN,
            "nfc": 3,
            "flops_fraction": 0.6,
            "units": ["blocks.0.attn", "blocks.0.ff", "blocks.1.attn"],
            "kinds": ["CCC", "CPP", "CPC"],
            "step_kinds": [0, 0, 1, 2, 1, 0],
        },
        "sampling": {"recipe": "transformer-only"},
        "predictor": {"kind": "taylor", "order": 1},
        "model": {"num_units": 3},
        "state": [],
        "files": {},
        "versions": {},
    }


def test_a_valid_per_unit_manifest_passes():
    validate_engine(per_unit_manifest(), Path("manifest.json"))


def _set(data: dict, where: str, value) -> None:
    *keys, last = where.split(".")
    for key in keys:
        data = data[key]
    if value is _DROP:
        del data[last]
    else:
        data[last] = value


_DROP = object()


@pytest.mark.parametrize(
    "where,value,message",
    [
        ("schedule.kinds", _DROP, "schedule.kinds must be"),
        ("schedule.kinds", ["CCC", "CPP", "CPP"], "schedule.kinds must be distinct"),
        ("schedule.kinds", ["CCC", "CP", "CPC"], "one letter per unit"),
        ("schedule.kinds", ["CCC", "CXP", "CPC"], "strings of C/P"),
        ("schedule.kinds", ["CPP", "CCC", "CPC"], "order of first use, the first one every unit computed"),
        ("schedule.step_kinds", [0, 0, 2, 1, 1, 0], "order of first use"),
        ("schedule.step_kinds", [0, 0, 1, 2, 1], "give each of the 6 steps"),
        ("schedule.step_kinds", [0, 0, 1, 3, 1, 0], "give each of the 6 steps"),
        ("schedule.step_kinds", [0, 0, 1, 2, 1, True], "give each of the 6 steps"),
        ("schedule.step_kinds", [0, 0, 1, 2, 1, 1], "pattern step 5 is C, its kind is CPP"),
        ("schedule.units", ["a", "a", "b"], "distinct unit paths"),
        ("schedule.units", ["a", "b"], "names 2 units, model.num_units is 3"),
        ("schedule.units", _DROP, "schedule.units must be"),
        ("model.num_units", 4, "model.num_units is 4"),
        ("graphs.kind2", _DROP, "graphs.kind2 missing"),
        ("graphs.full", {"file": "full.onnx", "inputs": [], "outputs": []}, "graphs.full is not a step graph"),
        ("graphs.kind3", {"file": "kind3.onnx", "inputs": [], "outputs": []}, "graphs.kind3 is not a step graph"),
    ],
)
def test_a_bad_per_unit_schedule_is_one_line(where, value, message):
    data = copy.deepcopy(per_unit_manifest())
    _set(data, where, value)
    with pytest.raises(BundleError, match=message) as info:
        validate_engine(data, Path("manifest.json"))
    assert "\n" not in str(info.value)


def _raw(data: dict) -> bytes:
    return json.dumps({**data, "content_sha256": content_hash(data)}).encode()


def test_step_kinds_need_format_4_and_format_4_needs_them():
    data = per_unit_manifest()
    parse_manifest(_raw(data), Path("m.json"))
    old = copy.deepcopy(data)
    old["format_version"] = 3
    with pytest.raises(BundleError, match="schedule.kinds needs format_version 4"):
        parse_manifest(_raw(old), Path("m.json"))
    for key in ("units", "kinds", "step_kinds"):
        del old["schedule"][key]
    with pytest.raises(BundleError, match="graphs.full missing"):
        parse_manifest(_raw(old), Path("m.json"))
    old["graphs"] = {n: {"file": f"{n}.onnx", "inputs": [], "outputs": []} for n in ("full", "cached")}
    parse_manifest(_raw(old), Path("m.json"))  # a step-mask manifest (format 3) loads as before
    newer = {**data, "format_version": 5}
    with pytest.raises(BundleError, match="this rfcache reads 3 and 4"):
        parse_manifest(_raw(newer), Path("m.json"))


def test_unit_coefficients_follow_each_units_own_history():
    """Step 5 of rows CCPCPC / CCPPPP (order 2): unit 0 computed (its last at step 3: distance 2), unit 1
    predicted from its own last computation at step 1 (k = 4) with the first order its two allow."""
    rows = unit_coefficients("CP", 5, last=[3, 1], full=[3, 2], keep=2)
    assert rows == [[2.0, 0.0, 0.0], [1.0, 4.0, 0.0]]
    assert unit_coefficients("PP", 5, last=[3, 2], full=[3, 3], keep=2) == [[1.0, 2.0, 2.0], [1.0, 3.0, 4.5]]
    # one computation so far: the first order only (0 above it), then a step-linear ratio's position
    assert unit_coefficients("P", 1, last=[0], full=[1], keep=2, position=0.25) == [[1.0, 0.0, 0.0, 0.25]]
    assert unit_coefficients("C", 0, last=[-1], full=[0], keep=1) == [[1.0, 0.0]]  # a first computation: 1
