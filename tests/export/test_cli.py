"""rfc-export and rfc-run end to end on a saved tiny pipeline, and their one-line errors."""

import contextlib
import io
import json

import pytest

from rfcache.cli.main import main
from tests.conftest import make_profile, make_tiny_digits_pipeline


@pytest.fixture(scope="module")
def model_and_profile(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    pipe = make_tiny_digits_pipeline()
    pipe.save_pretrained(root / "model")
    profile = make_profile(pipe, "CCCPPCPPPCPC").save(root / "tiny.yaml")
    return root / "model", profile


@pytest.fixture(scope="module")
def exported(model_and_profile, tmp_path_factory):
    """One bundle exported by rfc-export, and the JSON line it printed."""
    model, profile = model_and_profile
    bundle = tmp_path_factory.mktemp("exported") / "bundle"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", "--model", str(model), "--profile", str(profile), "--out", str(bundle), "--json"]) == 0
    return bundle, json.loads(out.getvalue().strip().splitlines()[-1])


def test_export_then_run(model_and_profile, exported, tmp_path, capsys):
    model, profile = model_and_profile
    bundle, exported = exported
    assert exported["pattern"] == "CCCPPCPPPCPC" and exported["backend"] == "onnx"
    png = tmp_path / "x.png"
    assert main(["run", "--bundle", str(bundle), "--class", "3", "--num", "2", "--out", str(png), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert png.read_bytes().startswith(b"\x89PNG")
    assert record["pattern"] == "CCCPPCPPPCPC" and record["backend"] == "onnx"
    assert record["seconds"] > 0 and record["flops_fraction"] == pytest.approx(0.4)
    # an existing bundle is not overwritten without --force
    assert main(["export", "--model", str(model), "--profile", str(profile), "--out", str(bundle)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "--bundle is required"),
        (["run", "--bundle", "nowhere"], "not a bundle folder"),
        (["export", "--out", "b"], "--profile and --out are required"),
        (["export", "--profile", "toy-b0.4", "--out", "b", "--backend", "coreml"], "backend 'coreml'"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "20"], "--steps 20: "),
        (["--height", "64"], "--height 64: "),
        (["--num-frames", "3"], "--num-frames 3: "),
        (["--call-args", '{"foo": 1}'], "--call-args: "),
        (["--negative-prompt", "blurry"], "--negative-prompt: "),
        (["--class", "99"], "--class 99 is outside the bundle's classes 0..9"),
        (["--out", "x.gif"], "images are written as .png"),
    ],
)
def test_run_refuses_what_the_bundle_fixes(exported, args, message, tmp_path, capsys):
    bundle, _ = exported
    png = tmp_path / "x.png"
    assert main(["run", "--bundle", str(bundle), "--out", str(png), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not png.exists(), err
    if not message.startswith("--class") and "written as" not in message:
        assert "replays its 12-step schedule alone" in err


def test_a_real_bundle_is_what_force_may_replace(exported):
    from rfcache.export import load_bundle
    from rfcache.outputs import check_folder_output

    bundle, _ = exported
    assert check_folder_output(bundle, flag="--out", force=True) == bundle  # a bundle may be replaced
    load_bundle(bundle)  # and checking it left it whole
