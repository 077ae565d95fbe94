"""``rfc-bench`` end to end on a tiny model: two methods, two samples, seconds."""

from __future__ import annotations

import json

import pytest

from rfcache.cli.main import main

KEYS = {"method", "setting", "nfc", "flops_fraction", "rel_l2", "psnr", "ssim", "speedup", "source"}


def test_bench_writes_json_markdown_and_plots(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    argv = ["--model", "tiny:dit", "--steps", "8", "--nfc", "4", "--methods", "fora,rfc", "--samples", "2"]
    argv += ["--repeats", "1", "--json", str(out), "--plot", str(plot), "--markdown", str(tmp_path / "b.md")]
    assert main([*argv, "--no-progress"], prog="rfc-bench", command="bench") == 0
    records = json.loads(out.read_text())
    assert [r["method"] for r in records] == ["full", "fora", "rfc"]
    for record in records:
        assert set(record) >= KEYS
    fora, rfc = records[1], records[2]
    assert fora["setting"] == rfc["setting"] == "NFC 4"
    assert fora["nfc"] == 4 and 0 < fora["flops_fraction"] < 1 and fora["source"] == "rfcache"
    assert abs(rfc["flops_fraction"] - fora["flops_fraction"]) < 0.15  # tau was swept to the same cost
    assert "tau" in rfc["params"] and len(rfc["step_fractions"]) == 8
    for png in (plot, tmp_path / "bench-patterns.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| NFC 4 | rfc | rfcache |" in (tmp_path / "b.md").read_text()
    printed = capsys.readouterr().out
    assert "FLOP frac" in printed and "wrote" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "nope"], "unknown method 'nope'"),
        (["--budget", "1.5"], "--budget values must be in (0, 1]"),
        (["--model", "tiny:nope"], "unknown family"),
        (["--methods", "fora,profile:nope"], "no profile file or shipped profile named 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys) -> None:
    assert main([*argv, "--steps", "4", "--nfc", "2", "--samples", "1"], prog="rfc-bench", command="bench") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_budget_targets_are_flop_fractions() -> None:
    from rfcache.evaluate.bench import BenchConfig, run_bench

    cfg = BenchConfig(model="tiny:dit", steps=8, budgets=(0.7,), methods=("fora", "rfc"), samples=1, repeats=0)
    result = run_bench(BenchConfig(**{**cfg.__dict__, "progress": False}))
    fora, rfc = result.records
    assert fora.setting == rfc.setting == "budget 0.7"
    assert fora.target_fraction == 0.7
    assert 0.55 < fora.flops_fraction <= 0.7  # the interval NFC whose fraction is nearest below the budget
    assert abs(rfc.flops_fraction - 0.7) < 0.15
