"""Devices: ``--device`` this torch cannot use is one line and exit 2 on every command, nothing written."""

import pytest
import torch

from rfcache.cli.main import main
from rfcache.devices import check_device, cuda_available
from rfcache.errors import RfcacheError
from rfcache.pipelines import load_pipeline

no_cuda = pytest.mark.skipif(cuda_available(), reason="CUDA is available here")


def test_cpu_is_accepted():
    assert check_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", ""])
def test_a_name_that_is_not_a_device_is_refused(name):
    with pytest.raises(RfcacheError, match="is not a torch device"):
        check_device(name)


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_one_line(name):
    with pytest.raises(RfcacheError) as info:
        check_device(name)
    message = str(info.value)
    assert "\n" not in message and name in message and ("without CUDA" in message or "no CUDA GPU" in message)


@no_cuda
def test_load_pipeline_refuses_cuda_before_loading():
    with pytest.raises(RfcacheError, match="cuda"):
        load_pipeline("toy", device="cuda")


@no_cuda
@pytest.mark.parametrize(
    "command",
    [
        ["calibrate", "--trials", "2", "--samples", "1", "--steps", "4"],
        ["generate", "--steps", "2"],
        ["export", "--profile", "toy-b0.4"],
        ["run", "--bundle", "bundle"],
        ["bench", "--steps", "4", "--samples", "1", "--repeats", "0"],
    ],
)
def test_every_command_refuses_cuda_in_one_line_and_writes_nothing(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "out")] if command[0] != "bench" else ["--json", str(tmp_path / "out")]
    assert main([*command, *out, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: device 'cuda'" in err[0]
    assert list(tmp_path.iterdir()) == []  # no study database, no bundle, no image


@pytest.mark.parametrize("command", ["calibrate", "generate", "export", "run", "bench"])
def test_every_command_loading_a_pipeline_takes_the_shared_dtype_flag(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = {"export": ["--profile", "toy-b0.4", "--out", "b"], "run": ["--bundle", "b", "--model", "toy"]}
    assert main([command, *args.get(command, []), "--dtype", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dtype must be one of float32, bfloat16, float16, got 'int8'" in err[0]
    assert list(tmp_path.iterdir()) == []
