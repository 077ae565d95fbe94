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


def test_show_refuses_a_broken_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\nname: [unclosed\n")
    assert main(["show", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"rfcache show: error: {bad}: not valid YAML")
