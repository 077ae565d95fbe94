"""Caching under diffusers' context parallelism: every rank computes what one device would.

Two gloo processes on CPU (tests/runtime/_cp_harness.py holds the CPU workarounds), tiny Flux under
Ulysses and Wan under Ring (all four pairs with RFCACHE_TEST_FULL=1), for TaylorSeer, RFE, dynamic
RFC and a static profile: the output equals the one-process cached output within 1e-5 relative,
every rank's output and summary are the same. A negative control (norms per shard, no reduction)
shows that this check does catch a missing reduction; a case whose shards' RCS errors straddle tau
shows one decision on every rank.

All of it runs in one spawned pair of ranks (imports cost more than the runs), with a hard timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rfcache
from rfcache.models.tiny import build_tiny_pipeline, tiny_pipeline_call_kwargs
from rfcache.schedules import Budget, MethodSpec, Profile, Provenance, SamplingSetup
from tests.conftest import FULL, full_only
from tests.runtime._cp_harness import enable_context_parallel, start_ranks

STEPS = 8
FAMILIES = ("flux", "wan")
# each family under one mode, each mode for one family (the other two pairs with RFCACHE_TEST_FULL=1)
COMBOS = (("flux", "ulysses"), ("wan", "ring")) + ((("flux", "ring"), ("wan", "ulysses")) if FULL else ())
SCHEDULE = "CCCPPCPC"
METHODS: dict[str, dict[str, Any]] = {
    "taylorseer": {"method": "taylorseer", "interval": 3, "warmup": 1, "order": 2},
    "rfe": {"method": "rfe", "interval": 3, "warmup": 2, "order": 2},
    "rfc": {"method": "rfc", "tau": 0.2, "warmup": 2, "order": 2, "max_cached": 3},
    "profile": {},  # a static profile (relational predictor, run-time ratios): see _profile
    "per-unit": {},  # the same with one row per unit (_per_unit_profile)
}
UNIT_ROWS = ("CCPPPCPC", "CCCCCCCC", "CCPCPCPC", SCHEDULE)
TOLERANCE = 1e-5


def _profile(pipe: Any, family: str) -> Profile:
    from rfcache.models import get_adapter, get_transformer
    from rfcache.runtime.identity import model_identity

    model = get_transformer(pipe)
    return Profile(
        name=f"tiny-{family}",
        model=model_identity(model, get_adapter(model)),
        sampling=SamplingSetup(
            scheduler=type(pipe.scheduler).__name__,
            num_steps=STEPS,
            guidance="embedded" if family == "flux" else "cfg",
            resolution=(),
        ),
        method=MethodSpec("relational", 2, "interval", {}),
        schedule=SCHEDULE,
        budget=Budget(0.5, 0.5),
        provenance=Provenance("test", 0, 1, "now"),
    )


def _per_unit_profile(pipe: Any, family: str) -> Profile:
    from rfcache.models import get_adapter, get_transformer
    from rfcache.schedules.masks import rows_intersection

    model = get_transformer(pipe)
    paths = [u.path for u in get_adapter(model).units(model)]
    rows = {path: UNIT_ROWS[i % len(UNIT_ROWS)] for i, path in enumerate(paths)}
    schedule = rows_intersection(list(rows.values()))
    return dataclasses.replace(_profile(pipe, family), schedule=schedule, unit_schedules=rows)


def _enable(pipe: Any, family: str, name: str) -> None:
    if name == "profile":
        rfcache.enable(pipe, _profile(pipe, family))
    elif name == "per-unit":
        rfcache.enable(pipe, _per_unit_profile(pipe, family))
    else:
        rfcache.enable(pipe, **METHODS[name])


def _generate(pipe: Any, family: str) -> np.ndarray:
    out = pipe(
        **tiny_pipeline_call_kwargs(family),
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    )
    latents = out.frames if hasattr(out, "frames") else out.images
    return latents.float().numpy()


def _cached(pipe: Any, family: str, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    _enable(pipe, family, name)
    try:
        out = _generate(pipe, family)
        summary = dataclasses.asdict(rfcache.summary(pipe))
    finally:
        rfcache.disable(pipe)
    return out, summary


def _one_nonfinite_output() -> Any:
    """A patch under which the first cached step's output looks non-finite (to the guard only)."""
    from unittest import mock

    from rfcache.runtime import session

    calls = []

    def first_tensor(output: Any) -> torch.Tensor:
        calls.append(1)
        return torch.tensor([float("nan")]) if len(calls) == 1 else session._first_tensor.__wrapped__(output)

    first_tensor.__wrapped__ = session._first_tensor  # type: ignore[attr-defined]
    return mock.patch.object(session, "_first_tensor", first_tensor)


def _straddle(rank: int, world: int) -> dict[str, bool]:
    """RCS on a first input whose two shards' errors lie on either side of tau (0.09 and 0.33 against
    0.3; 0.23 over the whole sequence): one decision on every rank, the one device's."""
    import torch.distributed as dist

    from rfcache.runtime.parallel import ContextGroup
    from rfcache.runtime.policies import DynamicPolicy

    group = ContextGroup(dist.group.WORLD, world, rank, "test")
    forecast = torch.ones(1, 4 * world, 2)  # (B, S, D); the forecast of the first unit's input
    error = torch.full_like(forecast, 0.1)
    error[:, 4 * (world - 1) :] = 0.5  # the last rank's shard is forecast badly
    first_input = forecast + error
    shard = slice(4 * rank, 4 * (rank + 1))

    def decide(x: torch.Tensor, ref: torch.Tensor, reduce: Any) -> bool:
        policy = DynamicPolicy(tau=0.3, order=1, warmup=0)
        policy._differences, policy._last_full = [ref], 0
        return policy.decide(1, 1, x, reduce=reduce)

    local = decide(first_input[:, shard], forecast[:, shard], None)
    reduced = decide(first_input[:, shard], forecast[:, shard], group.sum)
    return {
        "local": local,
        "reduced": group.any(reduced),
        "one_device": decide(first_input, forecast, None),
    }


def _compiled(pipe: Any) -> tuple[list[np.ndarray], dict[str, Any]]:
    """A static profile under ``compile=True``: two generations (the second replays the compiled variants)."""
    rfcache.enable(pipe, _profile(pipe, "flux"), compile=True)
    try:
        return [_generate(pipe, "flux") for _ in range(2)], dataclasses.asdict(rfcache.summary(pipe))
    finally:
        rfcache.disable(pipe)


def _cli(rank: int, folder: str) -> dict[str, Any]:
    """``rfc-generate --context-parallel ulysses`` as torchrun runs it on this rank (the group is joined)."""
    import io
    import os
    from unittest import mock

    from rfcache.cli.main import main

    out = Path(folder) / f"rank{rank}.png"
    stdout, stderr = io.StringIO(), io.StringIO()
    with (
        mock.patch.dict(os.environ, {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}),
        mock.patch("torch.accelerator.device_count", return_value=1),  # workaround 1, as in enable_context_parallel
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        code = main(["generate", *cli_args(folder), "--context-parallel", "ulysses", "--out", str(out)])
    return {"code": code, "stdout": stdout.getvalue(), "wrote": out.exists()}


def cli_args(folder: str) -> list[str]:
    args = ["--model", str(Path(folder) / "tiny-flux"), "--prompt", "a fox", "--height", "16", "--width", "16"]
    return [*args, "--steps", "8", "--method", "rfe", "--interval", "3", "--call-args", '{"max_sequence_length": 8}']


def _refuse_bundles(pipe: Any, results: dict[Any, Any], folder: str, rank: int) -> None:
    """``export`` and ``Bundle.into`` on a split model: one line each, nothing written, the pipeline unchanged."""
    out = Path(folder) / f"bundle-{rank}"
    try:
        rfcache.export(pipe, _profile(pipe, "flux"), out)
    except rfcache.RfcacheError as exc:
        results["flux", "ulysses", "refused", "export"] = str(exc)
    results["flux", "ulysses", "refused", "export", "written"] = out.exists()
    transformer = pipe.transformer
    # refused before the bundle is read: an empty manifest (exporting a real one costs a minute of CI)
    from rfcache.export import Bundle

    try:
        Bundle(Path(folder) / "unread", {}, _profile(pipe, "flux")).into(pipe)
    except rfcache.RfcacheError as exc:
        results["flux", "ulysses", "refused", "into"] = str(exc)
    results["flux", "ulysses", "refused", "into", "unchanged"] = pipe.transformer is transformer


def _worker(rank: int, world: int, per_shard: bool, folder: str) -> dict[str, Any]:
    """On each rank: every (family, mode, method) under context parallelism, and the controls."""
    results: dict[str, Any] = {"straddle": _straddle(rank, world), "cli": _cli(rank, folder)}
    for family, mode in COMBOS:
        pipe = build_tiny_pipeline(family)
        # cache first, then parallelism (the other order for the remaining methods)
        _enable(pipe, family, "rfe")
        enable_context_parallel(pipe.transformer, mode, world)
        try:
            results[family, mode, "rfe", "cache-first"] = (_generate(pipe, family), None)
        finally:
            rfcache.disable(pipe)
        for name in METHODS:
            results[family, mode, name] = _cached(pipe, family, name)
        if per_shard:  # the negative control: norms per shard, as without the reductions
            from unittest import mock

            with mock.patch("rfcache.runtime.session.context_group", return_value=None):
                results[family, mode, "rfe", "per-shard"] = _cached(pipe, family, "rfe")
        if (family, mode) == ("flux", "ulysses") and FULL:
            results["compiled"] = _compiled(pipe)  # (the "full" run below checks disable after compile)
        if (family, mode) == ("flux", "ulysses"):  # a non-finite output seen by one rank only
            with _one_nonfinite_output() if rank == 1 else contextlib.nullcontext():
                results[family, mode, "taylorseer", "nonfinite"] = _cached(pipe, family, "taylorseer")
        if (family, mode) == ("flux", "ulysses"):  # bundles are single-device: refused from Python too
            _refuse_bundles(pipe, results, folder, rank)
        if (family, mode) == ("wan", "ring"):  # refused, in one line, before any collective
            for refused in ({"granularity": "block"}, {"max_cache_bytes": 1 << 30}):
                try:
                    rfcache.enable(pipe, method="taylorseer", **refused)
                except rfcache.RfcacheError as exc:
                    results[(family, mode, "refused", *refused)] = str(exc)
                assert rfcache.runtime.api._SESSION_ATTR not in vars(pipe.transformer)
            from rfcache.calibrate.trace import record_trace

            try:
                record_trace(pipe, {**tiny_pipeline_call_kwargs(family), "num_inference_steps": 2})
            except rfcache.RfcacheError as exc:
                results[family, mode, "refused", "calibration"] = str(exc)
        results[family, mode, "full"] = (_generate(pipe, family), None)
    return results


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cp")
    build_tiny_pipeline("flux").save_pretrained(path / "tiny-flux")
    return str(path)


@pytest.fixture(scope="module")
def runs(folder) -> tuple[list[dict[str, Any]], dict[tuple[str, str], Any]]:
    """The two ranks' results and the one-process references, computed while the ranks run."""
    started = start_ranks(_worker, True, folder, world=2, timeout=400)
    out = {}
    try:
        for family in FAMILIES:
            pipe = build_tiny_pipeline(family)
            for name in METHODS:
                out[family, name] = _cached(pipe, family, name)
            out[family, "full"] = (_generate(pipe, family), None)
            if family == "flux":
                with _one_nonfinite_output():
                    out[family, "nonfinite"] = _cached(pipe, family, "taylorseer")
    except BaseException:
        started.close()
        raise
    return started.results(), out


@pytest.fixture(scope="module")
def ranks(runs) -> list[dict[str, Any]]:
    return runs[0]


@pytest.fixture(scope="module")
def references(runs) -> dict[tuple[str, str], tuple[np.ndarray, dict[str, Any]]]:
    return runs[1]


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_every_method_matches_one_device_on_every_rank(ranks, references, family, mode):
    full = references[family, "full"][0]
    assert _relative(ranks[0][family, mode, "full"][0], full) < TOLERANCE  # the harness itself
    for name in METHODS:
        expected, expected_summary = references[family, name]
        assert not np.allclose(expected, full, rtol=0, atol=1e-6), f"{name} predicted nothing"
        for rank in ranks:
            out, summary = rank[family, mode, name]
            assert _relative(out, expected) < TOLERANCE, (family, mode, name, _relative(out, expected))
            assert summary == expected_summary, (family, mode, name)
        np.testing.assert_array_equal(ranks[0][family, mode, name][0], ranks[1][family, mode, name][0])


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_cache_enabled_before_parallelism(ranks, references, family, mode):
    expected = references[family, "rfe"][0]
    for rank in ranks:
        assert _relative(rank[family, mode, "rfe", "cache-first"][0], expected) < TOLERANCE


@pytest.mark.parametrize(("family", "mode"), COMBOS)
def test_norms_per_shard_fail_the_check(ranks, references, family, mode):
    """The negative control: without the reductions RFE's outputs are off by more than the tolerance."""
    expected = references[family, "rfe"][0]
    assert _relative(ranks[0][family, mode, "rfe", "per-shard"][0], expected) > TOLERANCE


def test_shards_straddling_tau_take_one_decision(ranks):
    local = [rank["straddle"]["local"] for rank in ranks]
    assert local == [False, True]  # what each rank would decide from its shard alone
    assert [rank["straddle"]["reduced"] for rank in ranks] == [ranks[0]["straddle"]["one_device"]] * 2
    assert ranks[0]["straddle"]["one_device"] is False


def test_a_nonfinite_output_on_one_rank_is_rerun_on_every_rank(ranks, references):
    """Rank 1 alone sees a non-finite output at the first cached step: both ranks re-run it in full
    (one rank alone would wait forever in the re-run's all-to-all), as one device does."""
    expected, expected_summary = references["flux", "nonfinite"]
    assert expected_summary["nonfinite_fallbacks"] == 1
    for rank in ranks:
        out, summary = rank["flux", "ulysses", "taylorseer", "nonfinite"]
        assert _relative(out, expected) < TOLERANCE
        assert summary == expected_summary


@pytest.mark.parametrize(
    ("option", "words"),
    [("granularity", "granularity='module'"), ("max_cache_bytes", "unset"), ("calibration", "record on one device")],
)
def test_what_context_parallelism_cannot_do_is_refused_in_one_line(ranks, option, words):
    for rank in ranks:
        message = rank["wan", "ring", "refused", option]
        assert "context parallelism" in message and words in message and "\n" not in message, message


def test_bundles_are_refused_on_a_split_model_in_one_line(ranks):
    for rank in ranks:
        for what, words in (("export", "exporting a bundle"), ("into", "putting a bundle into a pipeline")):
            message = rank["flux", "ulysses", "refused", what]
            assert f"{words} is not supported under context parallelism: bundles are single-device" in message
            assert "\n" not in message
        assert not rank["flux", "ulysses", "refused", "export", "written"]
        assert rank["flux", "ulysses", "refused", "into", "unchanged"]


@full_only("compile=True under context parallelism: the same variants as tests/runtime/test_compile.py")
def test_compiled_profile_under_context_parallelism(ranks, references):
    expected, expected_summary = references["flux", "profile"]
    for rank in ranks:
        runs, summary = rank["compiled"]
        assert all(_relative(run, expected) < TOLERANCE for run in runs)
        assert summary == expected_summary


def test_rfc_generate_on_every_rank_writes_one_output_from_rank_0(ranks, folder):
    """The command as torchrun starts it on each rank: rank 0 writes and prints, rank 1 is silent, and
    the image is the one one process writes."""
    from PIL import Image

    from rfcache.cli.main import main

    assert [rank["cli"]["code"] for rank in ranks] == [0, 0]
    assert [rank["cli"]["wrote"] for rank in ranks] == [True, False]
    assert ranks[0]["cli"]["stdout"].count("wrote ") == 1 and ranks[1]["cli"]["stdout"] == ""
    assert "pattern           CCPPCPPC" in ranks[0]["cli"]["stdout"]
    assert main(["generate", *cli_args(folder), "--out", str(Path(folder) / "one.png")]) == 0
    split, one = (np.asarray(Image.open(Path(folder) / f"{n}.png"), dtype=float) for n in ("rank0", "one"))
    assert np.abs(split - one).max() <= 1.0  # 8-bit pixels: equal up to one rounding step
