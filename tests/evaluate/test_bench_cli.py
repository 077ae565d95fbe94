"""``rfc-bench`` end to end on a tiny model: two methods, two samples, seconds."""

from __future__ import annotations

import json

import pytest
import torch

from rfcache.cli.main import main

KEYS = {"method", "setting", "nfc", "flops_fraction", "rel_l2", "psnr", "ssim", "speedup", "source"}


def test_bench_writes_json_markdown_and_plots(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    plot = tmp_path / "bench.png"
    argv = ["--model", "tiny:dit", "--steps", "8", "--nfc", "4", "--methods", "fora,rfc", "--samples", "2"]
    argv += ["--reference", "fora"]
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
    # quality per sample: the mean with its bootstrap interval, and the paired ratio to the reference
    assert len(rfc["rel_l2_samples"]) == 2 and rfc["rel_l2"] == pytest.approx(sum(rfc["rel_l2_samples"]) / 2)
    low, high = rfc["rel_l2_ci95"]
    assert low <= rfc["rel_l2"] <= high
    assert fora["reference"] == rfc["reference"] == "fora" and fora["ratio"] == pytest.approx(1.0)
    low, high = rfc["ratio_ci95"]
    assert low <= rfc["ratio"] <= high
    for png in (plot, tmp_path / "bench-patterns.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| NFC 4 | rfc | rfcache |" in (tmp_path / "b.md").read_text()
    printed = capsys.readouterr().out
    assert "FLOP frac" in printed and "wrote" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "nope"], "unknown method 'nope'"),
        (["--budget", "1.5"], "--budget must be in (0, 1], got 1.5"),
        (
            ["--methods", "profile:toy-b0.4", "--model", "tiny:dit"],
            "--methods profile:toy-b0.4: profile 'toy-b0.4' is for",
        ),
        (["--model", "tiny:nope"], "unknown family"),
        (["--methods", "fora,profile:nope"], "no profile file or shipped profile named 'nope'"),
        (["--seed", "3"], "--seed 3: the evaluated samples' seeds would overlap the seeds 0..13"),
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


def test_paired_ratios_and_the_table_say_lower_only_when_the_interval_excludes_one() -> None:
    from rfcache.evaluate.bench import BenchRecord, BenchResult, pair_with_reference
    from rfcache.evaluate.tables import format_table

    def record(method: str, errors: list[float]) -> BenchRecord:
        r = BenchRecord(method, "NFC 4", "rfcache", 4, 0.3, 0.3, sum(errors) / len(errors), 40.0, 0.9)
        r.rel_l2_samples = errors
        return r

    base = [0.01, 0.05, 0.02, 0.08, 0.03, 0.04]
    records = [
        record("ref", base),
        record("better", [0.7 * e * (1 + 0.01 * i) for i, e in enumerate(base)]),
        record("mixed", [e * f for e, f in zip(base, [0.5, 2.0, 0.6, 1.8, 0.7, 1.5], strict=True)]),
    ]
    pair_with_reference(records, "ref")
    ref, better, mixed = records
    assert ref.ratio == pytest.approx(1.0) and better.ratio == pytest.approx(0.7, rel=0.05)
    assert better.ratio_ci95[1] < 1 and mixed.ratio_ci95[0] < 1 < mixed.ratio_ci95[1]
    table = format_table(BenchResult("m", 8, 6, records, {}, {}))
    lines = {line.split()[2]: line for line in table.splitlines()[2:]}  # setting "NFC 4", method
    assert "vs ref [95% CI]" in table and "x [" in lines["better"] and " lower " in lines["better"]
    assert "lower" not in lines["mixed"] and "higher" not in lines["mixed"]


def test_seed_is_the_base_seed_of_the_evaluated_samples() -> None:
    from rfcache.evaluate.workload import load_workload

    work = load_workload("tiny:dit", steps=2)
    first = work.generate(10)  # class 0, seed 1000 + 10
    work.seed = 2000
    assert not torch.equal(work.generate(10), first)
    work.seed = 1010
    assert torch.equal(work.generate(0), first)  # class 0 again, the same seed
