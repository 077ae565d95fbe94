"""The commands under ``torchrun``: ``--context-parallel`` for rfc-generate, one-line refusals elsewhere.

The fast tests set torchrun's environment (``WORLD_SIZE``, ``RANK``) in-process; the opt-in one
(``RFCACHE_TEST_TORCHRUN=1``) runs ``torchrun --nproc_per_node 2`` on a saved tiny Flux with the CPU
workarounds (tests/runtime/_cp_cli.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rfcache.cli.main import main


@pytest.fixture
def ranks(monkeypatch):
    """Pretend to be rank ``r`` of 2 under torchrun (the other ranks' silencing left out)."""
    monkeypatch.setattr("rfcache.cli._parallel._silence", lambda: None)
    monkeypatch.setattr("time.sleep", lambda s: None)

    def as_rank(rank: int) -> None:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))

    return as_rank


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("export", "bundles are single-device"),
        ("run", "bundles are single-device"),
        ("calibrate", "record the calibration on one device"),
        ("bench", "in one process"),
    ],
)
def test_commands_that_cannot_run_split_are_refused_from_rank_0_only(ranks, capsys, command, why):
    for rank in (0, 1):
        ranks(rank)
        assert main([command, "--model", "toy"]) == 2  # every rank exits non-zero
        err = capsys.readouterr().err
        if rank == 0:
            assert err.count("\n") == 1 and "under torchrun (2 ranks) is refused" in err and why in err, err
        else:
            assert err == ""


def test_generate_under_torchrun_needs_the_flag_and_the_flag_needs_torchrun(ranks, capsys, monkeypatch):
    ranks(0)
    assert main(["generate", "--out", "x.png"]) == 2
    assert "pass --context-parallel ulysses or ring" in capsys.readouterr().err
    assert main(["generate", "--context-parallel", "both"]) == 2
    assert "must be one of ulysses, ring" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert main(["generate", "--context-parallel", "ulysses"]) == 2
    assert "launch with torchrun --nproc_per_node N" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("RFCACHE_TEST_TORCHRUN") != "1",
    reason="launches torchrun (about 40 s of imports on 2 cores; the same command runs in-process on two ranks in "
    "tests/runtime/test_context_parallel.py): set RFCACHE_TEST_TORCHRUN=1",
)
def test_rfc_generate_under_torchrun_writes_one_output_equal_to_one_process(tmp_path):
    from rfcache.models.tiny import build_tiny_pipeline
    from tests.runtime._cp_harness import free_port

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    build_tiny_pipeline("flux").save_pretrained(tmp_path / "tiny-flux")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}:{root}", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    args = ["--model", str(tmp_path / "tiny-flux"), "--prompt", "a fox", "--height", "16", "--width", "16"]
    args += ["--steps", "8", "--method", "rfe", "--interval", "3", "--call-args", '{"max_sequence_length": 8}']
    launch = [shutil.which("torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    launch += ["--master_port", str(free_port()), str(root / "tests/runtime/_cp_cli.py")]
    split = subprocess.run(
        [*launch, *args, "--context-parallel", "ulysses", "--out", str(tmp_path / "cp.png")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert split.returncode == 0, split.stderr[-3000:]
    assert split.stdout.count("wrote ") == 1 and "pattern           CCPPCPPC" in split.stdout, split.stdout
    one = subprocess.run(
        [sys.executable, "-m", "rfcache.cli.main", "generate", *args, "--out", str(tmp_path / "one.png")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    from PIL import Image

    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=float) for n in ("cp", "one"))
    assert np.abs(a - b).max() <= 1.0  # 8-bit pixels: equal up to one rounding step
