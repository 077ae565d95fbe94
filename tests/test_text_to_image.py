"""Every family end to end through the CLI, from a saved pipeline folder, at a non-square,
non-default size with a prompts file: calibrate -> show -> generate --prompt -> export -> run --prompt,
the bundle-vs-runtime pixel parity, and the bad-input cases of the run description."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rfcache.cli.main import main
from rfcache.errors import RfcacheError
from rfcache.export import load_bundle
from rfcache.models.tiny import build_tiny_pipeline
from rfcache.runtime.runspec import RunSpec

# per family: the size flags (non-square, not the pipeline's default) and the other call arguments
SETUPS = {
    "pixart": (["--height", "16", "--width", "24"], {"max_sequence_length": 8, "use_resolution_binning": False}),
    "sd3": (["--height", "24", "--width", "16"], {"max_sequence_length": 8}),
    "flux": (["--height", "16", "--width", "32"], {"max_sequence_length": 8}),
    "wan": (["--height", "32", "--width", "48", "--num-frames", "5"], {"max_sequence_length": 8}),
}


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """Each tiny pipeline saved once per session, as a user's model folder."""
    root = tmp_path_factory.mktemp("models")
    for family in ("dit", *SETUPS):
        build_tiny_pipeline(family).save_pretrained(root / family)
    (root / "prompts.txt").write_text("a cat\n\na dog on a hill\n")
    return root


def _cli(*argv, capsys=None) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr() if capsys is not None else None
    return code, (out.out if out else ""), (out.err if out else "")


@pytest.mark.slow
@pytest.mark.parametrize("family", list(SETUPS))
def test_family_through_every_command(family, folders, tmp_path, capsys):
    size, call_args = SETUPS[family]
    model, prompts = folders / family, folders / "prompts.txt"
    run = [*size, "--call-args", json.dumps(call_args)]
    profile = tmp_path / f"{family}.yaml"
    code, out, err = _cli(
        "calibrate", "--model", model, "--prompts", prompts, "--steps", 6, "--trials", 3, "--samples", 2,
        "--selection", 1, "--test", 1, "--allow-overlap", "--confirm", 1, "--out", profile, "--json", *run,
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "estimated recording time" in err
    code, out, _ = _cli("show", profile, capsys=capsys)
    assert code == 0 and "schedule" in out
    video = family == "wan"
    cached = tmp_path / ("cached.gif" if video else "cached.png")
    code, _, err = _cli(
        "generate", "--model", model, "--profile", profile, "--prompt", "a red fox", "--seed", 3, "--out", cached,
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    bundle = tmp_path / "bundle"
    code, _, err = _cli("export", "--model", model, "--profile", profile, "--out", bundle, capsys=capsys)
    assert code == 0, err
    engine = tmp_path / ("engine.gif" if video else "engine.png")
    code, out, err = _cli(
        "run", "--bundle", bundle, "--model", model, "--prompt", "a red fox", "--seed", 3, "--out", engine, "--json",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    a, b = _pixels(cached), _pixels(engine)
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # of 255, on CPU
    width, height = int(size[size.index("--width") + 1]), int(size[size.index("--height") + 1])
    assert a.shape[:2] == ((5 * height, width) if video else (4 * height, 4 * width))  # 4x below 64 px
    # the text axis is dynamic: the bundle made at max_sequence_length 8 runs at 12, as the runtime does
    assert load_bundle(bundle).manifest["axes"]["text"]["dynamic"]
    longer = ["--call-args", json.dumps({**call_args, "max_sequence_length": 12})]
    cached12, engine12 = (p.with_stem(f"{p.stem}12") for p in (cached, engine))
    for command, out in (("generate", cached12), ("run", engine12)):
        source = ["--bundle", bundle] if command == "run" else ["--profile", profile]
        code, _, err = _cli(
            command, "--model", model, *source, "--prompt", "a red fox", "--seed", 3, *longer, "--out", out,
            capsys=capsys,
        )  # fmt: skip
        assert code == 0, err
    assert np.abs(_pixels(cached12).astype(int) - _pixels(engine12).astype(int)).max() <= 2
    if family != "pixart":  # no attention mask: the 4 more padding tokens change the image
        assert (_pixels(cached12) != a).any()
    # a different step count changes the trajectory: refused, one line, exit 2
    code, _, err = _cli(
        "run", "--bundle", bundle, "--model", model, "--prompt", "x", "--steps", 5, "--out", tmp_path / "n.png",
        capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "num_steps=6, got 5" in err and _one_error_line(err)


def _one_error_line(err: str) -> bool:
    """Exactly one error line and no traceback (diffusers' loading bars also go to stderr)."""
    return "Traceback" not in err and sum("error:" in line for line in err.splitlines()) == 1


def _pixels(path):
    with Image.open(path) as image:
        frames = []
        for i in range(getattr(image, "n_frames", 1)):
            image.seek(i)
            frames.append(np.asarray(image.convert("RGB")))
    return np.concatenate(frames, axis=0) if len(frames) > 1 else frames[0]


def test_generate_writes_video_as_gif_and_png_strip(folders, tmp_path, capsys):
    size = ["--height", "32", "--width", "48", "--num-frames", "5", "--steps", 2]
    common = [
        "--model",
        folders / "wan",
        "--prompts",
        folders / "prompts.txt",
        *size,
        "--call-args",
        '{"max_sequence_length": 8}',
    ]
    for out in (tmp_path / "v.gif", tmp_path / "v.png"):
        code, _, err = _cli("generate", *common, "--out", out, capsys=capsys)
        assert code == 0, err
    with Image.open(tmp_path / "v.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (2 * 48, 32)  # two videos side by side
    with Image.open(tmp_path / "v.png") as strip:
        assert strip.size == (5 * 49 - 1, 2 * 33 - 1)  # a row of 5 frames per video


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--model", "{dit}", "--prompt", "a cat"], "DiTPipeline is class-conditional: give --class N"),
        (["--model", "{sd3}", "--class", "3"], "StableDiffusion3Pipeline takes prompts"),
        (["--model", "{sd3}", "--prompt", "x", "--num-frames", "3"], "--num-frames: StableDiffusion3Pipeline takes no"),
        (["--model", "{sd3}", "--prompt", "x", "--call-args", '{"bogus": 1}'], "takes no 'bogus'"),
        (["--model", "{sd3}", "--prompt", "x", "--call-args", "[1]"], "--call-args must be a JSON object"),
        (["--model", "{sd3}", "--prompt", "x", "--call-args", '{"height": 8}'], "has its own flag"),
        (["--model", "{sd3}", "--prompt", "x", "--height", "17", "--steps", "1"], "failed in StableDiffusion3Pipeline"),
        (["--model", "{sd3}", "--prompts", "{empty}"], "prompt file is empty"),
    ],
)
def test_bad_run_input_is_one_line(argv, expected, folders, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n")
    names = {"dit": folders / "dit", "sd3": folders / "sd3", "empty": tmp_path / "empty.txt"}
    out = tmp_path / "out.png"
    argv = [names[a[1:-1]] if a[1:-1] in names and a.startswith("{") else a for a in argv]
    code, _, err = _cli("generate", *argv, "--out", out, capsys=capsys)
    assert code == 2, err
    assert expected in err and _one_error_line(err)
    assert not out.exists()


def test_calibrate_failing_call_leaves_nothing_behind(folders, tmp_path, capsys):
    out = tmp_path / "p.yaml"
    code, _, err = _cli(
        "calibrate", "--model", folders / "sd3", "--height", 17, "--steps", 2, "--budget", 0.6, "--trials", 1,
        "--samples", 2, "--selection", 1, "--test", 1, "--out", out,
        capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "calibration failed in StableDiffusion3Pipeline" in err
    assert _one_error_line(err)
    assert list(tmp_path.iterdir()) == []  # no profile, no study database


def test_run_spec_builds_checked_pipeline_arguments():
    pipe = build_tiny_pipeline("wan")
    run = RunSpec(prompts=("a", "b"), height=32, width=48, num_frames=5, steps=3, guidance=2.0, seed=1)
    assert run.inputs(pipe, 3) == {"prompt": ["a", "b", "a"]}
    assert run.call_kwargs(pipe) == {
        "num_inference_steps": 3,
        "height": 32,
        "width": 48,
        "num_frames": 5,
        "guidance_scale": 2.0,
    }
    with pytest.raises(RfcacheError, match="--steps must be at least 1"):
        RunSpec(steps=0)
    with pytest.raises(RfcacheError, match="takes no 'use_resolution_binning'"):
        RunSpec(call_args={"use_resolution_binning": False}).call_kwargs(pipe)


def test_profile_setup_check_refuses_trajectory_changes_and_warns_on_scale(caplog):
    from dataclasses import replace

    from tests.conftest import make_profile, make_tiny_digits_pipeline

    profile = make_profile(make_tiny_digits_pipeline(), "CCPC", guidance="cfg", guidance_scale=4.5, height=16)
    same = profile.sampling
    profile.check_setup(same)
    for field, value, message in (
        ("guidance", "none", "sampling.guidance='cfg', got 'none'"),
        ("num_steps", 5, "sampling.num_steps=4, got 5"),
        ("height", 24, "sampling.height=16, got 24"),
        ("scheduler", "EulerDiscreteScheduler", "sampling.scheduler"),
    ):
        with pytest.raises(RfcacheError, match=message):
            profile.check_setup(replace(same, **{field: value}))
    with caplog.at_level("WARNING"):
        profile.check_setup(replace(same, guidance_scale=6.0))
    assert "calibrated at guidance scale 4.5; running at 6" in caplog.text


def test_enable_refuses_a_cfg_profile_run_without_guidance():
    import rfcache
    from rfcache.runtime.identity import model_identity
    from rfcache.runtime.runspec import run_setup
    from rfcache.schedules import Budget, MethodSpec, Profile, Provenance

    pipe = build_tiny_pipeline("sd3")
    run = RunSpec(prompts=("a cat",), height=16, width=16, steps=3, guidance=4.0, call_args={"max_sequence_length": 8})
    model = pipe.transformer
    profile = Profile(
        name="p",
        model=model_identity(model, rfcache.get_adapter(model)),
        sampling=run_setup(pipe, run),
        method=MethodSpec("taylor", 1, "interval"),
        schedule="CCP",
        budget=Budget(0.9, 0.9),
        provenance=Provenance("x", 0, 1, "now"),
    )
    assert profile.sampling.guidance == "cfg"
    with pytest.raises(RfcacheError, match="sampling.guidance='cfg', got 'none'"):
        rfcache.enable(pipe, profile, run=replace_guidance(run, 1.0))
    rfcache.enable(pipe, profile)  # no run given: checked at the first transformer call instead
    try:
        with pytest.raises(RfcacheError, match="sampling.guidance='cfg', got 'none'"):
            pipe(**run.inputs(pipe), **replace_guidance(run, 1.0).call_kwargs(pipe), output_type="latent")
    finally:
        rfcache.disable(pipe)


def replace_guidance(run: RunSpec, scale: float) -> RunSpec:
    from dataclasses import replace

    return replace(run, guidance=scale)
