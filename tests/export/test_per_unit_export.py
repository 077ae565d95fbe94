"""Per-unit profiles in bundles: one step graph per step kind, replayed as the PyTorch runtime runs them."""

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest
import torch

import rfcache
from rfcache.cli.main import main
from rfcache.export import OrtRunner, export, load_bundle
from rfcache.models import get_adapter, get_transformer
from rfcache.models.tiny import tiny_transformer
from rfcache.schedules.masks import rows_intersection, step_kinds
from tests.conftest import families_param, full_only, make_profile, make_tiny_digits_pipeline
from tests.export.test_families import _profile, sampling_steps

STEPS = 8
FIRST, EVERY_3, EVERY_2 = "CCCCCCCC", "CCPPCPPC", "CCPCPCPC"  # the first unit always computed, as DBCache's F1


def unit_rows(model) -> dict[str, str]:
    """Rows that differ per unit (each keeps RFE's two-step warm-up): four step kinds."""
    paths = [u.path for u in get_adapter(model).units(model)]
    return {p: FIRST if i == 0 else (EVERY_3, EVERY_2)[i % 2] for i, p in enumerate(paths)}


def per_unit(profile, rows):
    return dataclasses.replace(profile, schedule=rows_intersection(list(rows.values())), unit_schedules=rows)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family", families_param(("dit",), "the kind graphs are built alike for every family; the DiT case takes that path")
)
def test_per_unit_bundle_replays_the_runtime_step_by_step(family, tmp_path):
    model = tiny_transformer(family).eval()
    example = get_adapter(model).example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    rows = unit_rows(model)
    profile = per_unit(_profile(model, example, "C" * STEPS), rows)
    bundle = load_bundle(export(model, profile, tmp_path / "b"))
    kinds = step_kinds(list(rows.values()))
    assert bundle.kinds == kinds and {"full", "cached"}.isdisjoint(bundle.graphs)
    assert {n for n in bundle.graphs if n.startswith("kind")} == {f"kind{i}" for i in range(len(kinds))}
    steps = OrtRunner(bundle).steps(2)
    names = [t.name for t in bundle.graphs["kind0"].inputs if t.name in example]
    rfcache.enable(model, profile)
    try:
        for i, inputs, reference in sampling_steps(model, example, profile.schedule):
            out = steps({n: inputs[n].numpy() for n in names})
            assert np.abs(out - reference.numpy()).max() < 1e-4, f"step {i}"
        assert steps.executed == rfcache.summary(model).pattern == profile.schedule
    finally:
        rfcache.disable(model)


@pytest.fixture(scope="module")  # slow: an export takes 20-40 s on a 2-core machine
def exported(tmp_path_factory):
    """The tiny digits pipeline, a per-unit profile of it, and its bundle written by rfc-export."""
    root = tmp_path_factory.mktemp("per-unit")
    pipe = make_tiny_digits_pipeline()
    pipe.save_pretrained(root / "model")
    rows = unit_rows(pipe.transformer)
    profile = per_unit(make_profile(pipe, "C" * STEPS), rows)
    path = profile.save(root / "per-unit.yaml")
    out = io.StringIO()
    args = ["export", "--model", str(root / "model"), "--profile", str(path), "--out", str(root / "b"), "--json"]
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return pipe, profile, root / "b", json.loads(out.getvalue().strip().splitlines()[-1])


def _eager_images(pipe, profile, labels=(1, 7)):
    rfcache.enable(pipe, profile)
    try:
        kwargs = {"num_inference_steps": STEPS, "guidance_scale": 2.0, "output_type": "np"}
        return pipe(class_labels=list(labels), generator=torch.Generator().manual_seed(0), **kwargs).images
    finally:
        rfcache.disable(pipe)


@pytest.mark.slow
def test_rfc_export_writes_one_graph_per_step_kind(exported):
    _, profile, path, record = exported
    bundle = load_bundle(path)
    assert record["pattern"] == profile.schedule
    assert bundle.manifest["format_version"] == 4
    assert bundle.kinds == step_kinds(list(profile.unit_rows().values()))
    assert [bundle.kinds[k] for k in bundle.step_kinds] == [
        "".join(r[s] for r in profile.unit_rows().values()) for s in range(STEPS)
    ]
    assert bundle.profile == profile


@pytest.mark.slow
def test_per_unit_bundle_generates_and_runs_in_the_pipeline_within_2_of_255(exported):
    pipe, profile, path, _ = exported
    reference = _eager_images(pipe, profile)
    bundle = load_bundle(path)
    generated = OrtRunner(bundle).generate([1, 7], seed=0, guidance_scale=2.0)
    assert generated.pattern == profile.schedule
    assert np.abs(generated.images - reference).max() <= 2 / 255
    engine = bundle.into(make_tiny_digits_pipeline())
    kwargs = {"num_inference_steps": STEPS, "guidance_scale": 2.0, "output_type": "np"}
    images = engine(class_labels=[1, 7], generator=torch.Generator().manual_seed(0), **kwargs).images
    assert engine.transformer.executed == profile.schedule
    assert np.abs(images - reference).max() <= 2 / 255


@pytest.mark.slow
def test_rfc_run_replays_a_per_unit_bundle(exported, tmp_path, capsys):
    _, profile, path, _ = exported
    png = tmp_path / "x.png"
    assert main(["run", "--bundle", str(path), "--class", "3", "--out", str(png), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pattern"] == profile.schedule


@pytest.mark.slow
def test_a_bundle_whose_profile_rows_differ_from_its_kinds_is_refused(exported, tmp_path):
    import shutil

    _, profile, path, _ = exported
    copy = shutil.copytree(path, tmp_path / "b")
    rows = dict(profile.unit_rows())
    first = next(iter(rows))
    rows[first] = EVERY_2  # no longer the kinds' row for this unit
    text = per_unit(profile, rows).to_yaml()
    (copy / "profile.yaml").write_text(text)
    manifest = json.loads((copy / "manifest.json").read_text())
    from rfcache.export.bundle import sha256
    from rfcache.export.manifest import content_hash

    manifest["files"]["profile.yaml"] = sha256(copy / "profile.yaml")
    manifest["content_sha256"] = content_hash(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(rfcache.BundleError, match=f"give {first} the row") as info:
        load_bundle(copy)
    assert "\n" not in str(info.value)


@pytest.mark.slow
@full_only("kind graphs go through the backend as in test_aoti; the ONNX ones are tested here")
def test_per_unit_aoti_bundle_matches_the_onnx_one(exported, tmp_path):
    pipe, profile, path, _ = exported
    aoti = load_bundle(export(pipe, profile, tmp_path / "aoti", backend="aoti"))
    assert aoti.kinds == load_bundle(path).kinds
    onnx = OrtRunner(load_bundle(path)).generate([1, 7], seed=0, guidance_scale=2.0)
    from rfcache.export import open_runner

    found = open_runner(aoti).generate([1, 7], seed=0, guidance_scale=2.0)
    assert found.pattern == onnx.pattern and np.abs(found.images - onnx.images).max() <= 2 / 255


def test_two_expert_per_unit_export_is_refused_in_one_line(tmp_path):
    from rfcache.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("wan", experts=2)
    model = get_transformer(pipe)
    rows = unit_rows(model)
    with pytest.raises(rfcache.RfcacheError, match="two-expert") as info:
        export(pipe, per_unit(make_profile(model, "C" * STEPS), rows), tmp_path / "b")
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_a_non_finite_mixed_step_reruns_with_every_unit_computed(exported, monkeypatch):
    """The runner commits a step's state only once its output is finite: a mixed step gone non-finite
    reruns as ``kind0`` from the state before it, as the eager runtime with that step full."""
    pipe, profile, path, _ = exported
    bundle = load_bundle(path)
    step = next(s for s, k in enumerate(bundle.step_kinds) if set(bundle.kinds[k]) == {"C", "P"})
    steps_class = OrtRunner.step_runner
    original = steps_class.run_graph

    def run_graph(self, graph, inputs, constant, value):
        out = original(self, graph, inputs, constant, value)
        return out * np.nan if self.step == step and graph != "kind0" else out

    monkeypatch.setattr(steps_class, "run_graph", run_graph)
    result = OrtRunner(bundle).generate([1, 7], seed=0, guidance_scale=2.0)
    assert result.nonfinite_fallbacks == 1  # CFG batched: one step runner
    rows = {u: r[:step] + "C" + r[step + 1 :] for u, r in profile.unit_rows().items()}
    reference = _eager_images(pipe, per_unit(profile, rows))
    assert result.pattern[step] == "C" and np.abs(result.images - reference).max() <= 2 / 255
