import os

import pytest

import rfcache
from rfcache.cli.main import main


def test_generate_writes_a_png_and_prints_the_summary(tmp_path, capsys):
    out = tmp_path / "d.png"
    code = main(["generate", "--num", "2", "--steps", "6", "--method", "rfe", "--interval", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file() and f"wrote {out}" in printed
    assert "pattern           CCPCPC" in printed and "flops fraction" in printed
    assert not list(tmp_path.glob("*.tmp"))


def test_generate_with_a_shipped_profile(tmp_path, capsys):
    assert main(["generate", "--profile", "toy-b0.4", "--out", str(tmp_path / "p.png")]) == 0
    assert "method            static" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--class", "10"], "--class 10 is outside the model's classes 0..9"),
        (["--method", "magic"], "method must be one of"),
        (["--model", "/no/such/folder"], "model folder /no/such/folder does not exist"),
        (["--dtype", "int8"], "--dtype must be one of"),
        (["--profile", "toy-b0.4", "--steps", "20"], "sampling.num_steps=50, got 20"),
    ],
)
def test_generate_bad_input(args, message, tmp_path, capsys):
    out = tmp_path / "x.png"
    steps = [] if "--steps" in args else ["--steps", "2"]
    assert main(["generate", *args, *steps, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and message in errors[0] and errors[0] == err[-1]  # a progress bar may precede it
    assert not out.exists()


def test_show_prints_and_plots(tmp_path, capsys):
    png = tmp_path / "s.png"
    assert main(["show", "toy-b0.6", "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    nfc = rfcache.load_profile("toy-b0.6").nfc
    assert "profile           toy-b0.6" in printed and f"NFC {nfc} of 50" in printed
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_show_prints_and_plots_a_per_unit_profile(tmp_path, capsys):
    from tests.schedules.test_profile_per_unit import make_per_unit

    path = make_per_unit().save(tmp_path / "per-unit.yaml")
    png = tmp_path / "grid.png"
    assert main(["show", str(path), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "per unit          computes 0.6875 of unit FLOPs (per-unit FLOPs)" in printed
    assert (
        "  b.0.ff     CCCPCP    4 C\n" in printed
        and "late       CCPCCC    5 C  (2 units: b.1.attn1, b.1.ff)" in printed
    )
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_show_refuses_a_broken_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\nname: [unclosed\n")
    assert main(["show", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"rfcache show: error: {bad}: not valid YAML")


# -- nothing lost, nothing silently ignored (issue 22): each case is refused before any work, in one line


def _one_line(capsys, prog="rfcache"):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and errors[0] == err[-1], err  # a progress bar may precede it
    return errors[0]


@pytest.mark.parametrize(
    "args,message",
    [
        # outputs: a folder where a file is meant, an unknown suffix, an unwritable place
        (["generate", "--out", "adir"], "--out adir: is a folder; give a sample file name"),
        (["generate", "--out", "x.jpg"], "--out x.jpg: a sample file is written as .png, .gif or .mp4"),
        (["generate", "--out", "x.gif", "--steps", "2"], "--out x.gif: images are written as .png"),
        (["run", "--bundle", "b", "--out", "adir"], "--out adir: is a folder"),
        (["show", "toy-b0.4", "--plot", "adir"], "--plot adir: is a folder; give a plot name"),
        (["show", "toy-b0.4", "--plot", "x.jpg"], "--plot x.jpg: a plot is written as .png"),
        (["bench", "--markdown", "adir"], "--markdown adir: is a folder"),
        (["bench", "--plot", "plot.txt"], "--plot plot.txt: a plot is written as .png"),
        (["calibrate", "--out", "adir"], "--out adir: is a folder; give a profile file name"),
        (["calibrate", "--out", "afile"], "--out afile: a profile file is written as .yaml or .yml"),
        (["bench", "--json", "afile"], "--json afile: a JSON file is written as .json"),
        (["calibrate", "--out", "afile/x.yaml"], "--out afile/x.yaml: afile is not a folder"),
        (["calibrate", "--out", "/proc/x.yaml"], "--out /proc/x.yaml: cannot create a file in /proc"),
        (["calibrate", "--storage", "adir"], "--storage adir: is a folder"),
        (["calibrate", "--shard", "0/2", "--trace-dir", "afile"], "--trace-dir afile: exists and is not a folder"),
        (["export", "--profile", "toy-b0.4", "--out", "afile", "--force"], "--out afile: exists and is not a folder"),
        (["export", "--profile", "toy-b0.4", "--out", "precious", "--force"], "--out precious: not an rfcache bundle"),
        (["export", "--profile", "toy-b0.4", "--out", ".", "--force"], "--out .: is the working directory"),
        (["export", "--profile", "toy-b0.4", "--out", "..", "--force"], "a folder above it or /; never replaced"),
        # flags that would be ignored, or contradict a profile or each other
        (["generate", "--tau", "0.2", "--steps", "2"], "--tau applies to --method rcs, rfc, not none"),
        (["generate", "--method", "fora", "--tau", "0.2"], "--tau applies to --method rcs, rfc, not fora"),
        (["generate", "--profile", "toy-b0.4", "--interval", "3"], "--interval: --profile fixes the schedule"),
        (["generate", "--profile", "toy-b0.4", "--method", "fora"], "--method: --profile fixes the method"),
        (["generate", "--fps", "4"], "--fps applies to a .gif or .mp4 --out, not out.png"),
        (["run", "--bundle", "b", "--dtype", "float16"], "--dtype applies to the --model pipeline"),
        (["bench", "--methods", ""], "--methods is empty"),
        (["bench", "--methods", "fora,rfc,fora"], "--methods names fora more than once"),
        (["bench", "--class", "99"], "--class: rfc-bench cycles through the model's classes itself"),
        (["bench", "--budget", "0.3", "--nfc", "5"], "--nfc: --budget replaces --nfc"),
        (["bench", "--methods", "fora,static", "--tune-samples", "3"], "--tune-samples applies to the methods whose"),
        (["calibrate", "--shard", "0/2", "--trace-dir", "t", "--trials", "9"], "--trials: --shard only records"),
        (
            ["calibrate", "--no-per-unit", "--local-moves", "8"],
            "--local-moves makes per-unit candidates: it contradicts",
        ),
        (["calibrate", "--local-moves", "-1"], "--local-moves must be at least 0, got -1"),
        (["export", "--profile", "toy-b0.4", "--out", "b", "--fp16"], "--fp16: an fp16 ONNX bundle runs on cuda only"),
        (["export", "--profile", "toy-b0.4", "--out", "b", "--dtype", "float16"], "--dtype float16: an fp16 ONNX"),
        # numbers: finite and in range, each flag named
        (["generate", "--guidance", "nan"], "argument --guidance: expected a finite number, got 'nan'"),
        (["calibrate", "--guidance", "inf"], "argument --guidance: expected a finite number, got 'inf'"),
        (["generate", "--guidance", "-3"], "--guidance must be at least 0, got -3"),
        (["generate", "--scale", "0"], "--scale must be at least 1, got 0"),
        (["generate", "--fps", "0", "--out", "v.gif"], "--fps must be at least 1, got 0"),
        (["run", "--bundle", "b", "--scale", "-2"], "--scale must be at least 1, got -2"),
        (["calibrate", "--samples", "0"], "--samples must be at least 1, got 0"),
        (["calibrate", "--selection", "0"], "--selection must be at least 1, got 0"),
        (["calibrate", "--test", "0"], "--test must be at least 1, got 0"),
        (["calibrate", "--trials", "0"], "--trials must be at least 1, got 0"),
        (["calibrate", "--budget", "1.5"], "--budget must be in (0, 1], got 1.5"),
        (["calibrate", "--budget", "0.001"], "--budget 0.001 is below the cheapest schedule"),
        (["bench", "--budget", "0.2,nan"], "expected a comma-separated list of float"),
        (["export", "--profile", "toy-b0.4", "--out", "b", "--guidance", "-3"], "--guidance must be at least 0"),
        (["generate", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        # inputs
        (["show", "/dev/zero"], "/dev/zero: not a regular file"),
        (["calibrate", "--storage", "garbage.journal", "--steps", "4"], "line 1 is not an Optuna journal record"),
    ],
)
def test_refused_before_any_work_in_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("years of work")
    (tmp_path / "garbage.journal").write_text("not a journal\n")
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    assert main(args) == 2
    line = _one_line(capsys)
    assert line.split(": error: ")[0] in (f"rfcache {args[0]}", "rfcache") and message in line, line
    assert {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")} == before  # nothing left


def test_tune_samples_is_taken_where_a_method_asked_for_sweeps_its_knob():
    from rfcache.cli.bench import BenchCommandConfig, check_flags

    for methods in (("fora", "rcs"), ("diffusers-fbc",), None):  # None: every method, rcs among them
        check_flags(BenchCommandConfig(methods=methods, tune_samples=3), {"methods", "tune_samples"})


def test_every_command_has_a_version(capsys):
    for command in ("show", "calibrate", "generate", "export", "run", "bench"):
        assert main([command, "--version"]) == 0
        assert capsys.readouterr().out.strip() == f"rfcache {rfcache.__version__}"


def test_ctrl_c_is_one_line_with_exit_130_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import dataclasses

    from rfcache.cli import main as cli

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "calibrate", dataclasses.replace(cli.COMMANDS["calibrate"], run=interrupted))
    assert main(["calibrate", "--out", str(tmp_path / "p.yaml")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (
        f"rfcache calibrate: interrupted; run the same command again to resume the study in "
        f"sqlite:///{tmp_path / 'p.optuna.db'}"
    )


def test_a_closed_pipe_is_quiet(tmp_path, monkeypatch):
    from rfcache.cli import main as cli

    class ClosedPipe:
        def __init__(self, fd):
            self.fd = fd

        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return self.fd

    with open(tmp_path / "stdout", "wb") as f:
        monkeypatch.setattr(cli.sys, "stdout", ClosedPipe(os.dup(f.fileno())))
        assert cli._print("profile ...") == 141


def test_a_resumed_calibration_says_so(tmp_path, capsys):
    import optuna

    from rfcache.cli.calibrate import _check_storage

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    assert _check_storage(url, None) is None  # a study with no finished trial resumes nothing
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert _check_storage(url, None) == f"resuming study 's' in {url}: 2 finished trials kept (--trials counts them)"
    assert _check_storage(url, "other") is None
