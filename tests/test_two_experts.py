"""The tiny two-expert Wan (Wan 2.2 style) end to end through the CLI, from a saved folder, at a
non-square, non-default size with a prompts file: calibrate -> show -> generate --prompt -> export
-> run --prompt, the bundle-vs-runtime pixel parity, and the one-line refusals across expert counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rfcache.export.manifest import BundleError, validate_experts
from rfcache.models.tiny import build_tiny_pipeline
from tests.test_text_to_image import _cli, _one_error_line, _pixels

SIZE = ["--height", "32", "--width", "48", "--num-frames", "5", "--call-args", json.dumps({"max_sequence_length": 8})]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    build_tiny_pipeline("wan", experts=2).save_pretrained(root / "wan2")
    build_tiny_pipeline("wan").save_pretrained(root / "wan")
    (root / "prompts.txt").write_text("a cat\n\na dog on a hill\n")
    return root


@pytest.mark.slow
def test_two_expert_wan_through_every_command(folders, tmp_path, capsys):
    model, prompts = folders / "wan2", folders / "prompts.txt"
    profile = tmp_path / "wan2.yaml"
    code, out, err = _cli(
        "calibrate", "--model", model, "--prompts", prompts, "--steps", 8, "--budget", 0.6, "--trials", 3,
        "--samples", 2, "--selection", 1, "--test", 1, "--allow-overlap", "--confirm", 1, "--out", profile, *SIZE,
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    code, out, _ = _cli("show", profile, capsys=capsys)
    assert code == 0 and "profile           wan2 (schema 1)" in out
    assert "expert            transformer: steps 0-2" in out and "expert            transformer_2: steps 3-7" in out
    cached = tmp_path / "cached.gif"
    code, out, err = _cli(
        "generate", "--model", model, "--profile", profile, "--prompt", "a red fox", "--seed", 3, "--out", cached,
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    bundle = tmp_path / "bundle"
    code, out, err = _cli("export", "--model", model, "--profile", profile, "--out", bundle, capsys=capsys)
    assert code == 0, err
    assert "transformer/full" in out and "transformer_2/full" in out
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [e["steps"] for e in manifest["experts"]] == [[0, 3], [3, 8]]
    engine = tmp_path / "engine.gif"
    code, out, err = _cli(
        "run", "--bundle", bundle, "--model", model, "--prompt", "a red fox", "--seed", 3, "--out", engine, "--json",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["pattern"] == manifest["schedule"]["pattern"] and len(result["pattern"]) == 8
    a, b = _pixels(cached), _pixels(engine)
    assert a.shape == b.shape == (5 * 32, 48, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # of 255, on CPU
    # across expert counts: one line, exit 2, nothing written
    for command in (
        ["run", "--bundle", bundle, "--model", folders / "wan", "--prompt", "x", "--out", tmp_path / "x.gif"],
        ["generate", "--model", folders / "wan", "--profile", profile, "--prompt", "x", "--out", tmp_path / "x.gif"],
    ):
        code, _, err = _cli(*command, capsys=capsys)
        assert code == 2 and "two experts (transformer, transformer_2); this WanPipeline has one" in err, err
        assert _one_error_line(err) and not (tmp_path / "x.gif").exists()


@pytest.mark.parametrize(
    ("experts", "message"),
    [
        ([{"component": "transformer", "steps": [0, 3], "bundle": "transformer"}], "a list of two entries"),
        (
            [
                {"component": "transformer", "steps": [0, 3], "bundle": "transformer"},
                {"component": "transformer_2", "steps": [4, 8], "bundle": "transformer_2"},
            ],
            r"experts\[1\] must have a component, steps \[3, stop\]",
        ),
        (
            [
                {"component": "transformer", "steps": [0, 3], "bundle": "transformer"},
                {"component": "transformer_2", "steps": [3, 8], "bundle": "../elsewhere"},
            ],
            r"experts\[1\]",
        ),
        (
            [
                {"component": "transformer", "steps": [0, 3], "bundle": "transformer"},
                {"component": "transformer_2", "steps": [3, 7], "bundle": "transformer_2"},
            ],
            "must cover the schedule's 8 steps",
        ),
    ],
)
def test_bad_experts_manifest_is_one_line(experts, message, tmp_path):
    with pytest.raises(BundleError, match=message) as info:
        validate_experts({"experts": experts, "schedule": {"mask": "CCPCCPPP"}}, tmp_path / "manifest.json")
    assert "\n" not in str(info.value)


def test_second_engine_predicts_only_from_its_own_full_steps():
    from rfcache.export.runner import pattern_coefficients

    # CCP | CCPPP, relational m=2: at step 5 the second expert has two full steps of its own (3, 4),
    # so only D_0 and D_1 exist there, as in its PyTorch session; counted from step 0 there are four
    own = pattern_coefficients("CCPCCPPP", 2, first_step=3)
    assert own[:5] == [None] * 5 and own[5] == [1.0, 1.0, 0.0] and own[7] == [1.0, 3.0, 0.0]
    assert pattern_coefficients("CCPCCPPP", 2)[5] == [1.0, 1.0, 0.5]
