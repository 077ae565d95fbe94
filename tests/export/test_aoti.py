"""``--backend aoti``: AOTInductor packages of the same step graphs, in the same bundle format.

One bundle is compiled per session (compiling costs tens of seconds on 2 cores) and shared.
"""

import json
import shutil

import numpy as np
import pytest
import torch

import rfcache
from rfcache.cli.main import main
from rfcache.devices import cuda_available
from rfcache.export import BundleError, export, load_bundle
from rfcache.export.backends import open_runner
from rfcache.export.backends.aoti import AotiRunner
from rfcache.models.tiny import tiny_transformer
from tests.conftest import full_only, make_profile, make_tiny_digits_pipeline

SCHEDULE = "CCCPPCPPPCPC"
LABELS = [1, 7]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def aoti_bundle(tmp_path_factory):
    """A tiny digits pipeline, its profile, and its aoti bundle written by ``rfc-export --backend aoti``."""
    root = tmp_path_factory.mktemp("aoti")
    pipe = make_tiny_digits_pipeline()
    pipe.save_pretrained(root / "model")
    profile = make_profile(pipe, SCHEDULE, predictor="relational", order=2)
    profile.save(root / "tiny.yaml")
    args = ["--model", str(root / "model"), "--profile", str(root / "tiny.yaml"), "--backend", "aoti"]
    assert main(["export", *args, "--out", str(root / "bundle")]) == 0
    return pipe, profile, root / "bundle"


def _torch_images(pipe, profile, labels=LABELS, seed=0):
    rfcache.enable(pipe, profile)
    try:
        images = pipe(
            class_labels=labels, num_inference_steps=len(SCHEDULE), generator=torch.Generator().manual_seed(seed)
        )
        return images.images, rfcache.summary(pipe).pattern
    finally:
        rfcache.disable(pipe)


def test_aoti_bundle_matches_the_pytorch_runtime_at_any_batch(aoti_bundle):
    pipe, profile, path = aoti_bundle
    bundle = load_bundle(path)
    assert bundle.backend == "aoti" and sorted(bundle.graphs) == ["cached", "conditioning", "full"]
    assert {f for f in bundle.manifest["files"] if f.endswith(".pt2")} == {"full.pt2", "cached.pt2", "conditioning.pt2"}
    runner = open_runner(bundle)
    assert isinstance(runner, AotiRunner)
    for labels in (LABELS, [3]):  # CFG batch 4, then 2: one package, a dynamic batch
        result = runner.generate(labels, seed=0)
        reference, pattern = _torch_images(pipe, profile, labels)
        assert result.pattern == pattern == SCHEDULE and result.nonfinite_fallbacks == 0
        assert np.abs(result.images - reference).max() < 1e-4  # measured ~1.5e-6 (inductor vs eager kernels)


def test_an_aoti_bundle_in_a_pipeline_matches_the_runtime(aoti_bundle):
    from tests.export.test_export import assert_bundle_in_a_pipeline_matches_the_runtime

    engine_pipe = assert_bundle_in_a_pipeline_matches_the_runtime(*aoti_bundle)
    assert isinstance(engine_pipe.transformer.runner, AotiRunner)


def test_aoti_graphs_have_the_onnx_graphs_inputs_outputs_and_state(aoti_bundle, tmp_path):
    pipe, profile, path = aoti_bundle
    aoti = load_bundle(path)
    onnx = load_bundle(export(pipe, profile, tmp_path / "onnx"))
    assert aoti.manifest["state"] == onnx.manifest["state"]
    for name in ("full", "cached", "conditioning"):
        assert aoti.graphs[name].inputs == onnx.graphs[name].inputs
        assert aoti.graphs[name].outputs == onnx.graphs[name].outputs


def test_rfc_run_picks_the_aoti_runner_from_the_manifest(aoti_bundle, tmp_path, capsys):
    png = tmp_path / "x.png"
    assert main(["run", "--bundle", str(aoti_bundle[2]), "--num", "2", "--out", str(png), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["backend"] == "aoti" and record["pattern"] == SCHEDULE and png.is_file()


def test_an_altered_package_is_refused(aoti_bundle, tmp_path):
    copy = shutil.copytree(aoti_bundle[2], tmp_path / "copy")
    data = bytearray((copy / "cached.pt2").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "cached.pt2").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="cached.pt2: sha256 does not match"):
        load_bundle(copy)


def test_a_bundle_compiled_for_cpu_is_refused_on_another_device(aoti_bundle, tmp_path):
    copy = shutil.copytree(aoti_bundle[2], tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["device"] == "cpu"
    bundle = load_bundle(copy)
    object.__setattr__(bundle, "manifest", {**manifest, "device": "cuda"})  # as if compiled on a GPU
    with pytest.raises(BundleError, match="compiled for cuda; they cannot run on cpu"):
        AotiRunner(bundle, device="cpu")


@full_only("Flux's text axis on AOTI; test_text_to_image runs the ONNX Flux bundle at two text lengths")
def test_a_transformer_only_bundle_replays_the_runtime_step_by_step(tmp_path):
    """A family with tuple-returning blocks (Flux: joint attention, rms_norm), run step by step, at
    the exported text length and at another one (the text axis is a ``Dim``, ``text + K`` in the
    single-stream state)."""
    model = tiny_transformer("flux").eval()
    adapter = rfcache.get_adapter(model)
    example = adapter.example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    from tests.export.test_families import _profile, sampling_steps

    schedule = "CCPPCPPC"
    profile = _profile(model, example, schedule)
    bundle = load_bundle(export(model, profile, tmp_path / "b", backend="aoti"))
    assert bundle.text_axis.dynamic and any("text+" in str(s["shape"]) for s in bundle.manifest["state"])
    conditioning = bundle.graphs["conditioning"]  # pooled text and guidance only: no text axis
    assert not any("text" in map(str, t.shape) for t in (*conditioning.inputs, *conditioning.outputs))
    names = [t.name for t in bundle.graphs["cached"].inputs if t.name in example]
    longer = adapter.example_inputs(model, batch=2, generator=torch.Generator().manual_seed(1))
    tokens = adapter.example_text_tokens + 3
    longer["encoder_hidden_states"] = torch.randn(2, tokens, model.config.joint_attention_dim)
    longer["txt_ids"] = torch.zeros(tokens, 3)
    rfcache.enable(model, profile)
    try:
        for text in (example, longer):
            steps = open_runner(bundle).steps(2, text_tokens=text["encoder_hidden_states"].shape[1])
            for i, inputs, reference in sampling_steps(model, text, schedule):
                out = steps({n: inputs[n] for n in names})
                assert isinstance(out, torch.Tensor)  # stays a tensor on the runner's device
                assert (out - reference).abs().max() < 1e-4, f"step {i}"
            assert steps.executed == rfcache.summary(model).pattern == schedule
    finally:
        rfcache.disable(model)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_aoti_on_cuda_with_cuda_graphs_matches_the_runtime(tmp_path):
    pipe = make_tiny_digits_pipeline().to("cuda")
    profile = make_profile(pipe, SCHEDULE, predictor="relational", order=2)
    bundle = load_bundle(export(pipe, profile, tmp_path / "b", backend="aoti"))
    reference, pattern = _torch_images(pipe, profile)
    for graphs in (False, True):
        runner = AotiRunner(bundle, device="cuda", cuda_graphs=graphs)
        result = runner.generate(LABELS, seed=0)
        assert result.pattern == pattern
        assert np.abs(result.images - reference).max() < 1e-3
