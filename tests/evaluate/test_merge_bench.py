"""``benchmarks/merge_bench.py``: a rerun's records replace the base run's, pairs recomputed."""

import importlib.util
import json
from pathlib import Path

DOCS = Path(__file__).parents[2] / "docs"


def _merge():
    path = Path(__file__).parents[2] / "benchmarks" / "merge_bench.py"
    spec = importlib.util.spec_from_file_location("merge_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_a_rerun_replaces_its_records_and_the_pairs_follow(tmp_path, capsys):
    records = json.loads((DOCS / "bench-toy.json").read_text())
    fix = [records[0]] + [
        {**r, "rel_l2": r["rel_l2"] / 2, "rel_l2_samples": [x / 2 for x in r["rel_l2_samples"]]}
        for r in records[1:]
        if r["method"] == "fora" and r["setting"] == "NFC 10"
    ]
    (tmp_path / "fix.json").write_text(json.dumps(fix))
    out = tmp_path / "out.json"
    assert _merge()([str(DOCS / "bench-toy.json"), str(tmp_path / "fix.json"), "--json", str(out)]) == 0
    merged = {(r["method"], r["setting"]): r for r in json.loads(out.read_text())[1:]}
    base = {(r["method"], r["setting"]): r for r in records[1:]}
    assert merged.keys() == base.keys()
    assert abs(merged["fora", "NFC 10"]["ratio"] - base["fora", "NFC 10"]["ratio"] / 2) < 1e-9
    assert merged["fora", "NFC 14"] == base["fora", "NFC 14"]


def test_another_models_file_is_refused_in_one_line(tmp_path, capsys):
    records = json.loads((DOCS / "bench-toy-flux.json").read_text())
    (tmp_path / "other.json").write_text(json.dumps(records))
    args = [str(DOCS / "bench-toy.json"), str(tmp_path / "other.json"), "--json", str(tmp_path / "out.json")]
    assert _merge()(args) == 2
    err = capsys.readouterr().err
    assert "other.json: toy-flux" in err and err.count("\n") == 1
    assert not (tmp_path / "out.json").exists()
