"""Per-unit profiles at run time: each unit follows its own row, with its own history."""

import dataclasses
import itertools

import pytest
import torch

import rfcache
import rfcache.runtime.session as session_module
from rfcache.models import get_adapter, get_transformer
from rfcache.runtime.api import get_session
from rfcache.schedules import Profile, ProfileError
from rfcache.schedules.masks import rows_intersection, unit_flops_fraction
from tests.conftest import generate, make_profile

STEPS = 12
SCHEDULE = "CCCPPCPPCPPC"


def _paths(pipe) -> list[str]:
    model = get_transformer(pipe)
    return [u.path for u in get_adapter(model).units(model)]


def _per_unit(pipe, rows: dict[str, str], **kwargs) -> Profile:
    base = make_profile(pipe, rows_intersection(list(rows.values())), **kwargs)
    return dataclasses.replace(base, unit_schedules=rows)


def _varied_rows(paths: list[str]) -> dict[str, str]:
    """Different rows per unit (each keeps RFE's two-step warm-up): some units cache more than others."""
    options = ("CCPPPCPPPCPP", "CCCCCCCCCCCC", "CCPCPCPCPCPC", SCHEDULE)
    return {path: options[i % len(options)] for i, path in enumerate(paths)}


@pytest.mark.parametrize("predictor,order", [("relational", 2), ("taylor", 2), ("reuse", 0)])
def test_equal_rows_are_bit_identical_to_the_step_mask(tiny_pipe, predictor, order):
    rfcache.enable(tiny_pipe, make_profile(tiny_pipe, SCHEDULE, predictor=predictor, order=order))
    reference, expected = generate(tiny_pipe, steps=STEPS), rfcache.summary(tiny_pipe)
    rfcache.disable(tiny_pipe)
    rows = dict.fromkeys(_paths(tiny_pipe), SCHEDULE)
    rfcache.enable(tiny_pipe, _per_unit(tiny_pipe, rows, predictor=predictor, order=order))
    assert torch.equal(generate(tiny_pipe, steps=STEPS), reference)
    found = rfcache.summary(tiny_pipe)
    assert found.pattern == expected.pattern == SCHEDULE
    assert found.flops_fraction == expected.flops_fraction and found.total_flops == expected.total_flops
    assert found.unit_patterns == (SCHEDULE,) * len(rows)


def test_per_unit_masks_change_exactly_the_units_they_name(tiny_pipe):
    """Each unit's own forward runs on exactly its row's C steps; on P steps the reuse predictor
    returns exactly that unit's output at its own latest C step (no other unit's)."""
    model = get_transformer(tiny_pipe)
    adapter = get_adapter(model)
    paths = _paths(tiny_pipe)
    rows = _varied_rows(paths)
    computed: dict[str, list[int]] = {p: [] for p in paths}
    latest: dict[str, torch.Tensor] = {}
    for unit in adapter.units(model):
        module = adapter.resolve(model, unit)

        def spy(*args, _original=module.forward, _path=unit.path, **kwargs):
            out = _original(*args, **kwargs)
            computed[_path].append(get_session(tiny_pipe)._step)
            return out

        module.forward = spy
    rfcache.enable(tiny_pipe, _per_unit(tiny_pipe, rows, predictor="reuse", order=0))
    session = get_session(tiny_pipe)
    seen: dict[str, list[tuple[int, bool]]] = {p: [] for p in paths}
    call = session._call_unit

    def record(unit, original, args, kwargs):
        out = call(unit, original, args, kwargs)
        if rows[unit.path][session._step] == "C":
            latest[unit.path] = out
        seen[unit.path].append((session._step, torch.equal(out, latest[unit.path])))
        return out

    session._call_unit = record
    session.detach()  # re-attach so the hooks route through ``record``
    session.attach()
    generate(tiny_pipe, steps=STEPS)
    for path, row in rows.items():
        assert computed[path] == [s for s, c in enumerate(row) if c == "C"], path  # batched CFG: one call a step
        assert all(same for _, same in seen[path]) and len(seen[path]) == STEPS
    s = rfcache.summary(tiny_pipe)
    assert s.unit_patterns == tuple(rows.values()) and s.pattern == rows_intersection(list(rows.values()))
    shape = session._shape
    costs = [adapter.unit_flops(model, u, shape) for u in adapter.units(model)]
    assert s.computed_module_flops / s.module_flops == pytest.approx(unit_flops_fraction(list(rows.values()), costs))
    assert "per unit" in str(s) and paths[0] in str(s)


def test_each_unit_keeps_its_own_history(tiny_pipe, monkeypatch):
    """Taylor differences use each unit's own distance between its own full steps."""
    paths = _paths(tiny_pipe)
    rows = _varied_rows(paths)
    distances: list[int] = []
    update = session_module.update_differences

    def spy(prev, out, distance, keep):
        distances.append(distance)
        return update(prev, out, distance, keep)

    monkeypatch.setattr(session_module, "update_differences", spy)
    rfcache.enable(tiny_pipe, _per_unit(tiny_pipe, rows, predictor="taylor", order=2))
    out = generate(tiny_pipe, steps=STEPS)
    assert torch.isfinite(out).all()
    expected = []  # per unit: 1 at its first full step, then the gaps between its own full steps
    for path in paths:
        fulls = [s for s, c in enumerate(rows[path]) if c == "C"]
        expected += [1] + [b - a for a, b in itertools.pairwise(fulls)]
    assert sorted(distances) == sorted(expected) and len(set(expected)) > 1


def test_per_unit_step_recomputed_in_full_replaces_its_refresh(tiny_pipe, monkeypatch):
    reference = generate(tiny_pipe, steps=STEPS)
    monkeypatch.setattr(session_module, "weighted_sum", lambda d, c, **kw: d[0] * float("nan"))
    rows = _varied_rows(_paths(tiny_pipe))
    profile = _per_unit(tiny_pipe, rows, predictor="taylor", order=2)
    rfcache.enable(tiny_pipe, profile, share_conditioning=False)
    cached = generate(tiny_pipe, steps=STEPS)
    s = rfcache.summary(tiny_pipe)
    assert s.nonfinite_fallbacks > 0 and s.pattern == "C" * STEPS
    assert torch.equal(cached, reference)  # units computed in the failed pass were refreshed once, not twice


def test_unit_names_are_checked_against_the_model(tiny_pipe):
    paths = _paths(tiny_pipe)
    rows = {**dict.fromkeys(paths[1:], SCHEDULE), "transformer_blocks.99.attn1": SCHEDULE}
    with pytest.raises(ProfileError, match="names 'transformer_blocks.99.attn1', not a unit of this model"):
        rfcache.enable(tiny_pipe, _per_unit(tiny_pipe, rows))


def test_sequential_and_batched_cfg_agree_under_per_unit_rows(tiny_pipe):
    from tests.runtime.test_session import _batched_cfg, _sequential_cfg

    model = tiny_pipe.transformer
    options = ("CCPPCPPC", "CCCCCCCC", "CCPCPCPC")
    rows = {path: options[i % 3] for i, path in enumerate(_paths(tiny_pipe))}
    base = make_profile(model, rows_intersection(list(rows.values())), predictor="relational", resolution=(1, 8, 8))
    rfcache.enable(model, dataclasses.replace(base, unit_schedules=rows))
    sequential, _ = _sequential_cfg(model, [3, 5], 10)
    s = rfcache.summary(model)
    assert s.unit_patterns == tuple(rows.values()) and s.num_calls == 16 and len(s.patterns) == 2
    batched = _batched_cfg(model, [3, 5], 10)
    torch.testing.assert_close(sequential, batched, rtol=1e-4, atol=1e-5)


def test_two_experts_each_replay_their_steps_of_every_units_row():
    import numpy as np

    from rfcache.models.tiny import build_tiny_pipeline, tiny_pipeline_call_kwargs
    from tests.conftest import make_expert_profile

    pipe = build_tiny_pipeline("wan", experts=2)  # switches at step 2 of 6
    options = ("CCCCPP", "CCCCCP", "CCCCPC")  # RFE: two full steps from each expert's first step
    rows = {path: options[i % 3] for i, path in enumerate(_paths(pipe))}
    base = make_expert_profile(pipe, rows_intersection(list(rows.values())))
    rfcache.enable(pipe, dataclasses.replace(base, unit_schedules=rows))
    kwargs = {**tiny_pipeline_call_kwargs("wan"), "num_inference_steps": 6, "output_type": "np"}
    frames = np.asarray(pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames)
    s = rfcache.summary(pipe)
    assert np.isfinite(frames).all() and s.pattern == "CCCCPP"
    assert s.unit_patterns == tuple(rows.values())  # each unit's row, its steps joined over both experts


def test_unit_masks_without_a_profile(tiny_pipe):
    """The Python API's ``method="static"`` takes rows by unit index; a wrong row count is one line."""
    mask = tuple(c == "C" for c in SCHEDULE)
    units = len(_paths(tiny_pipe))
    with pytest.raises(rfcache.RfcacheError, match=f"unit_masks has 2 rows; this DiTTransformer2DModel has {units}"):
        rfcache.enable(tiny_pipe, method="static", mask=mask, unit_masks=(mask, mask))
    rows = tuple(mask if u % 2 else (True,) * STEPS for u in range(units))
    rfcache.enable(tiny_pipe, method="static", mask=mask, unit_masks=rows)
    generate(tiny_pipe, steps=STEPS)
    assert rfcache.summary(tiny_pipe).unit_patterns == tuple(SCHEDULE if u % 2 else "C" * STEPS for u in range(units))
