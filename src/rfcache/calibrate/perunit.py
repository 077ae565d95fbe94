"""The per-unit family of the search: one ``C``/``P`` row per unit (or group of units) under the step-mask budget.

The budget couples the units only through their summed FLOPs, counted as the step-mask search counts
them (:func:`unit_flops_fraction`: each unit's computed FLOPs plus its predictor's cost at full and at
cached steps), so a per-unit schedule is a Lagrangian split: each group of units gets its best masks by
dynamic programming on its own teacher-forced forecast error (its share of the step error ``e(c)``,
weighted by the error model's sensitivity), and one multiplier spends the budget across the groups
(:func:`rfcache.schedules.masks.split_budget`). Variants (``params["family"]``):

- ``unit-split``: every unit its own row; ``depth`` > 0 weighs the errors of earlier units up (their
  errors reach every later unit's input, which the teacher-forced replay does not see): the
  interaction correction, tuned by real runs in :func:`depth_moves`;
- ``unit-kind``: one row per unit kind (attention, feed-forward, ... of each block list);
- ``unit-ends``: DBCache's Fn/Bn: the first and last ``ends`` blocks always computed, one row for the rest;
- ``unit-prefix``: the error model's step mask with ``nfc`` full steps for every unit, and the first
  ``head`` blocks computed at more steps, placed greedily where they cut those blocks' estimated error
  most, until the budget is spent. Every step then computes a prefix of the units in execution order,
  so every computed unit sees its true input and refreshes its history cleanly (the staggered rows
  of the split refresh some units from inputs earlier predictions built);
- ``unit-tail``: the mirror: the error model's step mask with ``nfc`` full steps, more than the budget
  pays for, for every unit, and the first ``head`` blocks (whose forecast errors are often the
  smallest) predicted at some of those steps, removed where that adds least to their estimated
  error, until the budget fits. The later units then refresh from inputs with only the head's
  prediction error in them.

Rows are kept within ``max_step_kinds`` distinct step columns by :func:`limit_step_kinds`. A candidate
whose rows are all equal is the step mask (``rows`` None).

- ``unit-local`` (opt-in, ``local_moves`` real runs): from the best confirmed step mask, one unit's
  full step moved to another step of its row at a time (its FLOPs, so the budget, unchanged), each
  proposal run for real on the calibration inputs and kept where the error drops
  (:func:`local_moves`). Real runs see what the teacher-forced replay cannot: a unit computed at a
  step its predecessors skip refreshes its history from inputs their predictions built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfcache.calibrate.errormodel import ErrorModel, ForecastErrors
from rfcache.calibrate.search import Candidate
from rfcache.calibrate.trace import Trace
from rfcache.errors import RfcacheError
from rfcache.runtime.predictors import estimate_predictor_flops
from rfcache.schedules import masks
from rfcache.schedules.masks import rows_intersection, step_kinds

__all__ = [
    "UNIT_FAMILIES",
    "UnitLayout",
    "check_max_step_kinds",
    "depth_moves",
    "limit_step_kinds",
    "local_moves",
    "unit_candidates",
    "unit_flops_fraction",
    "unit_layout",
]

logger = logging.getLogger(__name__)

UNIT_FAMILIES = ("unit-split", "unit-kind", "unit-ends", "unit-prefix", "unit-tail", "unit-local")
_EPS = 1e-12
#: the step kinds ``unit-local`` may reach where ``max_step_kinds`` is not given: what ``compile=True``
#: keeps as whole-forward variants (dynamo's default recompile limit), and a bounded bundle
LOCAL_STEP_KINDS = 8


@dataclass(frozen=True)
class UnitLayout:
    """The model's units in execution order: path, kind group (``transformer_blocks.*.attn1``) and block."""

    paths: tuple[str, ...]
    kinds: tuple[str, ...]
    blocks: tuple[str, ...]

    def groups(self, family: str, ends: int = 1) -> list[tuple[int, ...]] | None:
        """The unit indices of each row of ``family`` (``unit-ends``: the end blocks first); None where
        the family does not apply (fewer than ``2 * ends + 1`` blocks)."""
        units = range(len(self.paths))
        if family == "unit-split":
            return [(u,) for u in units]
        if family == "unit-kind":
            return [tuple(u for u in units if self.kinds[u] == k) for k in dict.fromkeys(self.kinds)]
        order = list(dict.fromkeys(self.blocks))
        if len(order) < 2 * ends + 1:
            return None
        kept = set(order[:ends] + order[-ends:])
        return [
            tuple(u for u in units if self.blocks[u] in kept),
            tuple(u for u in units if self.blocks[u] not in kept),
        ]


def unit_layout(model: Any, trace: Trace) -> UnitLayout:
    """The adapter's units of ``model``; refuses a trace recorded on other units."""
    from rfcache.models import get_adapter

    units = get_adapter(model).units(model)
    paths = tuple(u.path for u in units)
    if tuple(trace.units) != paths:
        raise RfcacheError(f"the trace's {len(trace.units)} units are not this model's {len(paths)} units")
    kinds = tuple(f"{u.block_list}.*.{u.kind}" for u in units)
    return UnitLayout(paths, kinds, tuple(f"{u.block_list}.{u.block_index}" for u in units))


def check_max_step_kinds(value: int | None, *, name: str = "max_step_kinds") -> None:
    """Refuse a kind limit below 2: full steps are one kind, and any cached step another."""
    if value is not None and value < 2:
        raise RfcacheError(f"{name} must be >= 2 (full steps are one kind, cached steps another), got {value}")


def _unit_terms(trace: Trace, predictor: str, order: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Per unit: the FLOPs a full step costs over a cached one (module + predictor refresh - forecast),
    the cached step's predictor FLOPs, and the module FLOPs of one full step (all units)."""
    if trace.unit_costs is None:
        raise RfcacheError("the trace has no unit costs (recorded by an older rfcache); record it again")
    flops, numel_in, numel_out = (trace.unit_costs[:, i] for i in range(3))
    full = np.array(
        [
            estimate_predictor_flops(predictor, order, int(o), int(i), full=True)
            for i, o in zip(numel_in, numel_out, strict=True)
        ]
    )
    cached = np.array(
        [
            estimate_predictor_flops(predictor, order, int(o), int(i), full=False)
            for i, o in zip(numel_in, numel_out, strict=True)
        ]
    )
    return flops + full - cached, cached.astype(np.float64), float(flops.sum())


def unit_flops_fraction(trace: Trace, rows: Sequence[str], predictor: str, order: int) -> float:
    """The session's FLOP fraction of per-unit ``rows``: each unit's computed module FLOPs plus its
    predictor's cost at its full and cached steps, over the full-compute module FLOPs. Equal rows give
    :func:`rfcache.calibrate.errormodel.flops_fraction` of that pattern."""
    marginal, cached, module = _unit_terms(trace, predictor, order)
    steps = len(rows[0])
    counts = np.array([row.count("C") for row in rows], dtype=np.float64)
    return float((counts @ marginal + steps * cached.sum()) / (steps * module))


def _group_tables(
    fe: ForecastErrors, groups: Sequence[tuple[int, ...]], sensitivity: np.ndarray, weights: np.ndarray, max_gap: int
) -> tuple[list[dict[int, tuple[bool, ...]]], list[dict[int, float]]]:
    """Per group: its best mask for each number of full steps (dynamic programming on the group's share
    of the step error, ``weights`` per unit), and that mask's squared error estimate."""
    steps = fe.num_steps
    options, tables = [], []
    for group in groups:
        segment = _group_segment(fe, group, weights[list(group)])
        best = masks.optimal_masks(
            steps, segment, sensitivity, keep=fe.keep, warmup=fe.min_full, max_nfc=steps, max_gap=max_gap
        )
        options.append(best)
        tables.append({n: masks.mask_error(m, segment, sensitivity, keep=fe.keep) for n, m in best.items()})
    return options, tables


def split_rows(
    fe: ForecastErrors,
    trace: Trace,
    model: ErrorModel,
    groups: Sequence[tuple[int, ...]],
    budget: float,
    *,
    predictor: str,
    order: int,
    always: Sequence[int] = (),
    depth: float = 0.0,
    max_gap: int = 10,
) -> tuple[str, ...] | None:
    """Per unit, its row of the Lagrangian split of ``budget`` over ``groups`` (groups in ``always``
    computed at every step); None where the budget cannot pay for even the fewest full steps."""
    marginal, cached, module = _unit_terms(trace, predictor, order)
    units, steps = len(marginal), fe.num_steps
    weights = 1.0 + depth * (units - 1 - np.arange(units)) / max(units - 1, 1)
    free = [g for i, g in enumerate(groups) if i not in always]
    fixed = sum(marginal[list(g)].sum() for i, g in enumerate(groups) if i in always)
    left = budget * module - cached.sum() - fixed  # per step, for the free groups' full steps
    costs = [float(marginal[list(g)].sum()) for g in free]
    if left <= 0 or not free:
        return None
    options, tables = _group_tables(fe, free, model.sensitivity, weights, max_gap)
    try:
        counts = masks.split_budget(tables, costs, left / sum(costs), steps)
    except ValueError:
        return None
    rows = ["C" * steps] * units
    for group, best, n in zip(free, options, counts, strict=True):
        for u in group:
            rows[u] = "".join("C" if f else "P" for f in best[n])
    return tuple(rows)


def limit_step_kinds(rows: Sequence[str], max_kinds: int, costs: Sequence[float], fits: Any) -> tuple[str, ...]:
    """``rows`` with at most ``max_kinds`` distinct step columns: while there are more, the two kinds
    that differ in the fewest unit FLOPs (times the steps they hold) are merged, into their union
    where ``fits(rows)`` (the budget) allows, else their intersection. Full steps are never changed
    (so the warm-up holds)."""
    cols = ["".join(r[s] for r in rows) for s in range(len(rows[0]))]
    c = np.asarray(costs, dtype=np.float64)
    full = "C" * len(rows)
    while len(set(cols)) > max_kinds:
        kinds = [k for k in dict.fromkeys(cols) if k != full]
        uses = {k: cols.count(k) for k in kinds}
        pairs = [(a, b) for i, a in enumerate(kinds) for b in kinds[i + 1 :]]
        if not pairs:  # only full steps and one other kind remain
            break

        a, b = min(pairs, key=lambda pair: _merge_gap(pair, c, uses))
        union = "".join("C" if "C" in (x, y) else "P" for x, y in zip(a, b, strict=True))
        inter = "".join("C" if x == y == "C" else "P" for x, y in zip(a, b, strict=True))
        trial = [union if k in (a, b) else k for k in cols]
        cols = trial if fits(_rows_of(trial)) else [inter if k in (a, b) else k for k in cols]
    return _rows_of(cols)


def _merge_gap(pair: tuple[str, str], costs: np.ndarray, uses: dict[str, int]) -> float:
    """The unit FLOPs two step kinds differ in, times the steps of the rarer one: what merging them changes."""
    a, b = pair
    return float(sum(costs[u] for u in range(len(costs)) if a[u] != b[u])) * min(uses[a], uses[b])


def _rows_of(cols: Sequence[str]) -> tuple[str, ...]:
    return tuple("".join(col[u] for col in cols) for u in range(len(cols[0])))


def unit_candidate(
    scorer: Any, params: dict[str, Any], rows: Sequence[str], *, max_step_kinds: int | None, budget: float
) -> Candidate | None:
    """A per-unit candidate of ``rows`` (kinds limited, the error model's estimate as its error); the
    step mask where all rows are equal; None where it does not fit the budget."""
    trace, predictor, order = scorer.trace, params["predictor"], int(params["order"])
    marginal, _, _ = _unit_terms(trace, predictor, order)

    def fits(r: Sequence[str]) -> bool:
        return unit_flops_fraction(trace, r, predictor, order) <= budget + 1e-12

    if max_step_kinds is not None:
        rows = limit_step_kinds(rows, max_step_kinds, marginal, fits)
    fraction = unit_flops_fraction(trace, rows, predictor, order)
    if not fits(rows):
        return None
    pattern = rows_intersection(rows)
    unit_rows = None if len(set(rows)) == 1 else tuple(rows)
    return Candidate(dict(params), pattern, fraction, unit_estimate(scorer, params, rows), -1, rows=unit_rows)


def unit_estimate(scorer: Any, params: dict[str, Any], rows: Sequence[str]) -> float:
    """The error model's estimate of per-unit ``rows``: each unit's replayed forecast error from its own
    full steps, summed per step as ``e(c)``, in runs between the steps every unit computes (for equal
    rows, the step mask's own estimate)."""
    fe = scorer.errors(params)
    per_unit = np.zeros(fe.outputs.shape[:2])
    for row in dict.fromkeys(rows):
        errors, _ = fe.unit_errors(tuple(ch == "C" for ch in row))
        for u, r in enumerate(rows):
            if r == row:
                per_unit[:, u] = errors[:, u]
    pattern = tuple(ch == "C" for ch in rows_intersection(rows))
    step = per_unit.sum(axis=1) / np.maximum(fe.output_size, _EPS)
    error = scorer.model.estimate(step, pattern)
    return error if np.isfinite(error) else float("inf")


def _group_segment(fe: ForecastErrors, group: Sequence[int], weights: np.ndarray | None = None) -> masks.Segment:
    """The share of the step error ``e(c)`` the units of ``group`` contribute (each unit's error times its
    weight, default 1), given their full steps."""
    size = np.maximum(fe.output_size, _EPS)
    units = list(group)

    def segment(fulls: tuple[int, ...], length: int) -> np.ndarray:
        a, block = fulls[0], fe.errors_after(fulls, length)
        share = block[:, units].sum(axis=1) if weights is None else block[:, units] @ weights
        return share / size[a + 1 : a + 1 + len(block)]

    return segment


def prefix_rows(
    scorer: Any, params: dict[str, Any], layout: UnitLayout, budget: float, *, head: int, nfc: int
) -> tuple[str, ...] | None:
    """The ``unit-prefix`` rows: the error model's mask of ``nfc`` full steps for every unit, and the
    units of the first ``head`` blocks also computed at the steps that cut their estimated error most
    (one at a time, while the budget allows); None where the base mask alone exceeds the budget."""
    fe, trace = scorer.errors(params), scorer.trace
    predictor, order = params["predictor"], int(params["order"])
    base = fe.pattern(scorer.optimal({**params, "nfc": nfc}))
    blocks = list(dict.fromkeys(layout.blocks))[:head]
    group = [u for u, b in enumerate(layout.blocks) if b in blocks]
    segment, sensitivity = _group_segment(fe, group), scorer.model.sensitivity

    def rows_of(mask: Sequence[bool]) -> tuple[str, ...]:
        head_row, rest = _letters(mask), _letters(base)
        return tuple(head_row if u in group else rest for u in range(len(layout.paths)))

    if unit_flops_fraction(trace, rows_of(base), predictor, order) > budget:
        return None
    mask = list(base)
    current = masks.mask_error(mask, segment, sensitivity, keep=fe.keep)
    while True:
        best: tuple[float, int] | None = None
        for step in (s for s, full in enumerate(mask) if not full):
            trial = [*mask[:step], True, *mask[step + 1 :]]
            if unit_flops_fraction(trace, rows_of(trial), predictor, order) > budget:
                break  # every added step costs the same: none fits
            error = masks.mask_error(trial, segment, sensitivity, keep=fe.keep)
            if error < current and (best is None or error < best[0]):
                best = (error, step)
        if best is None:
            return rows_of(mask)
        current, mask[best[1]] = best[0], True


def tail_rows(
    scorer: Any, params: dict[str, Any], layout: UnitLayout, budget: float, *, head: int, nfc: int
) -> tuple[str, ...] | None:
    """The ``unit-tail`` rows: the error model's mask of ``nfc`` full steps for every unit, the units of
    the first ``head`` blocks predicted at those of its steps (not the warm-up) whose loss adds least
    to their estimated error, one at a time until the budget fits; None where it never fits."""
    fe, trace = scorer.errors(params), scorer.trace
    predictor, order = params["predictor"], int(params["order"])
    base = fe.pattern(scorer.optimal({**params, "nfc": nfc}, most=nfc))
    blocks = list(dict.fromkeys(layout.blocks))[:head]
    group = [u for u, b in enumerate(layout.blocks) if b in blocks]
    segment, sensitivity = _group_segment(fe, group), scorer.model.sensitivity
    warm = fe.pattern((False,) * len(base))  # the predictor's forced first full steps

    def rows_of(mask: Sequence[bool]) -> tuple[str, ...]:
        head_row, rest = _letters(mask), _letters(base)
        return tuple(head_row if u in group else rest for u in range(len(layout.paths)))

    mask = list(base)
    while unit_flops_fraction(trace, rows_of(mask), predictor, order) > budget:
        options = [
            (masks.mask_error([*mask[:step], False, *mask[step + 1 :]], segment, sensitivity, keep=fe.keep), step)
            for step, full in enumerate(mask)
            if full and not warm[step] and step > 0
        ]
        if not options:
            return None
        mask[min(options)[1]] = False
    return rows_of(mask)


def _letters(mask: Sequence[bool]) -> str:
    return "".join("C" if f else "P" for f in mask)


def _prefix_candidates(
    scorer: Any, layout: UnitLayout, setting: dict[str, Any], budget: float, *, max_step_kinds: int | None
) -> list[Candidate]:
    """``unit-prefix`` and ``unit-tail`` candidates: heads of 1, 2 and half the blocks, over base masks of
    1-3 full steps fewer (prefix) and more (tail) than the budget's step mask affords."""
    count = len(dict.fromkeys(layout.blocks))
    most = scorer.max_nfc
    out = []
    for head in sorted({h for h in (1, 2, count // 2) if 0 < h < count}):
        shapes = [("unit-prefix", prefix_rows, n) for n in range(most - 1, max(most - 4, 1), -1)]
        shapes += [("unit-tail", tail_rows, n) for n in range(most + 1, min(most + 4, scorer.num_steps) + 1)]
        for family, rows_for, nfc in shapes:
            rows = rows_for(scorer, setting, layout, budget, head=head, nfc=nfc)
            params = {**setting, "family": family, "head": head, "nfc": nfc}
            cand = (
                None
                if rows is None
                else unit_candidate(scorer, params, rows, max_step_kinds=max_step_kinds, budget=budget)
            )
            if cand is not None and cand.rows is not None:
                out.append(cand)
    return out


def _variants(layout: UnitLayout) -> list[tuple[dict[str, Any], list[tuple[int, ...]], tuple[int, ...]]]:
    """(params, groups, always-computed groups) of each structured variant that applies to the model."""
    out: list[tuple[dict[str, Any], list[tuple[int, ...]], tuple[int, ...]]] = []
    for depth in (0.0, 1.0):
        out.append(({"family": "unit-split", "depth": depth}, layout.groups("unit-split") or [], ()))
    kinds = layout.groups("unit-kind") or []
    if len(kinds) > 1:
        out.append(({"family": "unit-kind"}, kinds, ()))
    for ends in (1, 2):
        groups = layout.groups("unit-ends", ends)
        if groups is not None:
            out.append(({"family": "unit-ends", "ends": ends}, groups, (0,)))
    return out


def unit_candidates(
    scorer: Any,
    layout: UnitLayout,
    predictors: Sequence[dict[str, Any]],
    budget: float,
    *,
    max_step_kinds: int | None = None,
) -> list[Candidate]:
    """The per-unit family's candidates for each predictor setting (``predictor``, ``order``, ratio
    choice): each variant's best by estimate first, then the rest, best first; those that turn out a
    step mask or exceed the budget are left out."""
    if scorer.trace.expert_starts is not None and len(scorer.trace.expert_starts):
        raise RfcacheError("per-unit schedules are not searched on two-expert pipelines yet")
    out: list[Candidate] = []
    for setting in predictors:
        fe = scorer.errors(setting)
        for extra, groups, always in _variants(layout):
            params = {**setting, **extra}
            rows = split_rows(
                fe,
                scorer.trace,
                scorer.model,
                groups,
                budget,
                predictor=setting["predictor"],
                order=int(setting["order"]),
                always=always,
                depth=float(extra.get("depth", 0.0)),
                max_gap=scorer.max_gap,
            )
            cand = (
                None
                if rows is None
                else unit_candidate(scorer, params, rows, max_step_kinds=max_step_kinds, budget=budget)
            )
            if cand is not None and cand.rows is not None:
                out.append(cand)
        out += _prefix_candidates(scorer, layout, setting, budget, max_step_kinds=max_step_kinds)
    out.sort(key=lambda c: c.error)
    # each family's best first: the estimates rank candidates of one family better than across families
    firsts = list({c.params["family"]: c for c in reversed(out)}.values())
    out = sorted(firsts, key=lambda c: c.error) + [c for c in out if all(c is not f for f in firsts)]
    logger.info("per-unit family: %d candidates over %d predictor settings", len(out), len(predictors))
    return out


def depth_moves(
    scorer: Any,
    layout: UnitLayout,
    best: Candidate,
    budget: float,
    *,
    max_step_kinds: int | None = None,
) -> list[Candidate]:
    """Local moves from the best confirmed ``unit-split`` candidate: its interaction weight ``depth``
    halved and doubled (from 0: 0.5), to be measured by real runs."""
    if best.params.get("family") != "unit-split":
        return []
    depth = float(best.params.get("depth", 0.0))
    out = []
    for moved in sorted({depth / 2, depth * 2} if depth else {0.5}):
        params = {**best.params, "depth": moved}
        rows = split_rows(
            scorer.errors(params),
            scorer.trace,
            scorer.model,
            layout.groups("unit-split") or [],
            budget,
            predictor=params["predictor"],
            order=int(params["order"]),
            depth=moved,
            max_gap=scorer.max_gap,
        )
        cand = (
            None if rows is None else unit_candidate(scorer, params, rows, max_step_kinds=max_step_kinds, budget=budget)
        )
        if cand is not None and cand.rows is not None:
            out.append(cand)
    return out


def step_kind_count(cand: Candidate) -> int:
    """How many distinct step kinds a candidate's schedule has (a step mask: at most two)."""
    return len(step_kinds(cand.rows)) if cand.rows else len(set(cand.pattern))


def local_moves(
    start: Candidate,
    units: int,
    real_error: Callable[..., float],
    *,
    moves: int,
    min_full: int,
    max_step_kinds: int | None = None,
    seed: int = 0,
) -> Candidate | None:
    """``unit-local``: ``moves`` proposals from ``start`` (a measured candidate; a step mask's rows are its
    pattern for each of ``units``), each one random unit's full step moved to one of its predicted steps
    (never the first step, never before ``min_full`` full steps of its row; at most ``max_step_kinds``,
    default :data:`LOCAL_STEP_KINDS`, step kinds), run for real (``real_error(params, pattern, rows=)``)
    and kept where the error is lower than the best so far. None where no proposal improved on ``start``."""
    rng = np.random.default_rng(seed)
    rows = list(start.rows or (start.pattern,) * units)
    best, limit, tried = start.error, max_step_kinds or LOCAL_STEP_KINDS, 0
    for _ in range(moves):
        u = int(rng.integers(units))
        row = list(rows[u])
        computed = [step for step, c in enumerate(row) if c == "C" and step > 0]
        predicted = [step for step, c in enumerate(row) if c == "P"]
        if not computed or not predicted:
            continue
        row[int(rng.choice(computed))], row[int(rng.choice(predicted))] = "P", "C"
        trial = [*rows[:u], "".join(row), *rows[u + 1 :]]
        if masks.warmup_violation(trial[u], min_full) is not None or len(step_kinds(trial)) > limit:
            continue
        tried += 1
        error = real_error(start.params, rows_intersection(trial), rows=tuple(trial))
        if error < best:
            rows, best = trial, error
    logger.info("unit-local: %d of %d proposals run, rel-L2 %.4g -> %.4g", tried, moves, start.error, best)
    if best >= start.error or len(set(rows)) == 1:
        return None
    params = {**start.params, "family": "unit-local", "moves": float(moves)}
    return Candidate(params, rows_intersection(rows), start.flops_fraction, best, -1, estimate=None, rows=tuple(rows))
