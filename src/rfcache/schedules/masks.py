"""Schedule families as pure functions: which steps are computed in full (True) and which predicted.

One home for every mask generator, used alike by the runtime (``IntervalPolicy``), the search
(:mod:`rfcache.calibrate.scoring`) and the benchmarks. numpy only, no torch:

- :func:`interval_mask`: FORA's, TaylorSeer's and RFE's uniform schedule, placed as TaylorSeer's
  reference code places it (``cal_type``): steps ``0..w-1`` full, then a full step whenever ``N``
  steps have passed since the last one, i.e. full at ``w-1+jN``; :func:`interval_for_nfc` picks
  the one with a given number of full steps;
- :func:`warped_mask`: ``nfc`` full steps spread by a blend of uniform and cosine spacing;
- :func:`rcs_mask`: the decisions RCS takes when replayed on recorded first-unit inputs;
- :func:`optimal_masks`: the masks an additive error model rates best (dynamic programming);
- :func:`split_budget`: per-unit schedules under one FLOP budget by a Lagrange multiplier: each
  unit's number of full steps minimises its own estimated error + lambda x its cost, lambda
  bisected to meet the budget (the units couple only through their summed FLOPs);
  :func:`mask_error` rates any mask under the same model as :func:`optimal_masks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

import numpy as np

__all__ = [
    "effective_pattern",
    "interval_for_nfc",
    "interval_mask",
    "is_interval_full",
    "mask_error",
    "min_full_steps",
    "optimal_masks",
    "rcs_mask",
    "rows_intersection",
    "runs_full",
    "split_budget",
    "step_kinds",
    "unit_flops_fraction",
    "warmup_violation",
    "warped_mask",
]

_EPS = 1e-12


def runs_full(planned_full: bool, full_steps: int, min_full_steps: int) -> bool:
    """The warm-up rule: a step is computed where it is planned full or where the predictor has fewer
    than ``min_full_steps`` full steps so far to predict from (RFE needs two)."""
    return planned_full or full_steps < min_full_steps


def min_full_steps(predictor: str) -> int:
    """Full steps a predictor needs before it can predict: RFE's ratio needs two, the others one."""
    return 2 if predictor == "relational" else 1


def warmup_violation(row: str, min_full: int, start: int = 0) -> int | None:
    """The first step of ``row`` (from ``start``) planned ``P`` before ``min_full`` full steps since
    ``start``; None where the row respects the warm-up (it then equals its :func:`effective_pattern`)."""
    full = 0
    for step in range(start, len(row)):
        if row[step] == "P" and full < min_full:
            return step
        full += row[step] == "C"
        if full >= min_full:
            return None
    return None


def rows_intersection(rows: Sequence[str]) -> str:
    """Per step ``C`` where every row is ``C``: the steps on which every unit is computed (full steps)."""
    return "".join("C" if all(r[i] == "C" for r in rows) else "P" for i in range(len(rows[0])))


def step_kinds(rows: Sequence[str]) -> list[str]:
    """The distinct step kinds of a per-unit schedule, in order of first use: a kind is one step's
    column of the rows (``C`` for each unit computed at that step), so a step-mask schedule has at most
    two (all ``C``, all ``P``). An exported per-unit bundle holds one step graph per kind.

    Example:
        >>> step_kinds(["CCPC", "CPPP"])
        ['CC', 'CP', 'PP']
    """
    kinds: dict[str, None] = {}
    for step in range(len(rows[0]) if rows else 0):
        kinds.setdefault("".join(r[step] for r in rows), None)
    return list(kinds)


def unit_flops_fraction(rows: Sequence[str], costs: Sequence[float]) -> float:
    """The fraction of the units' full-compute FLOPs a per-unit schedule computes (predictions not
    counted): ``Σ_u cost_u · NFC_u / (Σ_u cost_u · S)``."""
    total = sum(costs) * len(rows[0])
    return sum(c * r.count("C") for r, c in zip(rows, costs, strict=True)) / total if total else 1.0


def effective_pattern(mask: str, min_full_steps: int, starts: Collection[int] = ()) -> str:
    """The pattern a ``C``/``P`` mask executes under :func:`runs_full` (the runtime's session does the
    same step by step). ``starts``: where a two-expert pipeline's later experts start; each one's
    session starts with no history there, so the warm-up applies again.

    A profile's schedule is always its own effective pattern (loading refuses one that is not,
    :func:`warmup_violation`); the rewrite applies to the masks the calibration search builds and to
    ``enable(method="static", mask=...)``, whose summary reports the executed pattern."""
    out, full = [], 0
    for step, letter in enumerate(mask):
        full = 0 if step in starts else full
        letter = "C" if runs_full(letter == "C", full, min_full_steps) else "P"
        full += letter == "C"
        out.append(letter)
    return "".join(out)


def is_interval_full(step: int, interval: int, warmup: int) -> bool:
    """Whether ``step`` is a full step of the interval schedule (TaylorSeer's placement).

    ``warmup`` leading steps are full; after the last of them (step ``warmup - 1``) a full step
    comes whenever ``interval`` steps have passed since the previous one. With ``warmup = 0`` the
    first full step is step ``interval - 1``.
    """
    return step < warmup or (step >= warmup - 1 and (step - warmup + 1) % interval == 0)


def interval_mask(num_steps: int, interval: int, warmup: int) -> tuple[bool, ...]:
    """The interval schedule over ``num_steps`` steps (True = full); see :func:`is_interval_full`.

    Example:
        >>> "".join("C" if f else "P" for f in interval_mask(12, 4, 2))
        'CCPPPCPPPCPP'
    """
    if interval < 1 or warmup < 0:
        raise ValueError(f"interval must be >= 1 and warmup >= 0, got {interval}, {warmup}")
    return tuple(is_interval_full(s, interval, warmup) for s in range(num_steps))


def interval_for_nfc(num_steps: int, nfc: int, *, warmup: int = 2) -> tuple[int, int, int]:
    """The interval schedule (``interval``, ``warmup``, its NFC) whose NFC is nearest ``nfc``.

    ``warmup`` (the model family's TaylorSeer default, ``BlockAdapter.taylorseer_warmup``) is
    preferred; warm-ups of 1 to 6 are tried where it cannot give ``nfc`` exactly. Where no
    combination does, the nearest wins, preferring more full steps, so a method compared
    against it is never favoured.
    """
    options = []
    for w in dict.fromkeys((warmup, *range(1, 7))):
        for interval in range(1, num_steps + 1):
            n = sum(interval_mask(num_steps, interval, w))
            options.append((abs(n - nfc), -n, w != warmup, interval, w, n))
    *_, interval, w, n = min(options)
    return interval, w, n


def warped_mask(num_steps: int, nfc: int, warmup: int, alpha: float) -> tuple[bool, ...]:
    """``warmup`` full steps, then ``nfc - warmup`` more spread by a blend of uniform and cosine spacing.

    ``alpha = 0`` is uniform, ``alpha = 1`` cosine spacing (denser at both ends, where
    trajectories bend most).
    """
    rest = max(0, nfc - warmup)
    u = np.linspace(0.0, 1.0, rest + 1)[:-1] if rest else np.zeros(0)
    warped = (1 - alpha) * u + alpha * (1 - np.cos(np.pi * u)) / 2
    full = set(range(min(warmup, num_steps)))
    for w in warped:
        step = warmup + round(float(w) * (num_steps - warmup))
        while step in full and step < num_steps - 1:
            step += 1
        full.add(min(step, num_steps - 1))
    return tuple(i in full for i in range(num_steps))


def rcs_mask(
    first_input: np.ndarray, *, tau: float, order: int, warmup: int, max_cached: int | None, min_full: int
) -> tuple[bool, ...]:
    """The pattern RCS gives when replayed on recorded first-unit inputs ``(S, B, D)``.

    The runtime ``DynamicPolicy``'s rule: full for ``warmup`` steps, then full when the relative-L1
    error of the order-``order`` Taylor forecast of the input, accumulated since the last full step
    (largest over the batch), exceeds ``tau``, or after ``max_cached`` cached steps; at least
    ``min_full`` full steps before any prediction (the predictor's own need).
    """
    x = np.asarray(first_input, dtype=np.float64)  # (S, B, D)
    l1 = np.abs(x).sum(-1)  # (S, B)
    diffs: list[np.ndarray] = []
    last, accumulated, num_full, out = -1, 0.0, 0, []
    for step in range(x.shape[0]):
        since = step - last if last >= 0 else step + 1
        if step < warmup or not diffs or (max_cached is not None and since > max_cached):
            full = True
        else:
            k = step - last
            forecast = sum(d * (k**i / math.factorial(i)) for i, d in enumerate(diffs))
            error = np.abs(x[step] - forecast).sum(-1) / np.maximum(l1[step], _EPS)
            accumulated += float(error.max())
            full = accumulated > tau
        full = full or num_full < min_full
        if full:
            distance = step - last if diffs else 1
            new = [x[step]]
            for i in range(min(order, len(diffs))):
                new.append((new[i] - diffs[i]) / distance)
            diffs, last, accumulated, num_full = new, step, 0.0, num_full + 1
        out.append(full)
    return tuple(out)


# segment(fulls, length): the weighted-free per-step errors of the ``length`` cached steps after
# the latest full step ``fulls[0]`` (``fulls``: the last full steps, latest first)
Segment = Callable[[tuple[int, ...], int], np.ndarray]


def optimal_masks(
    num_steps: int,
    segment: Segment,
    sensitivity: Sequence[float],
    *,
    keep: int,
    warmup: int,
    max_nfc: int,
    max_gap: int = 10,
) -> dict[int, tuple[bool, ...]]:
    """The mask an additive error model rates best for each number of full steps ``warmup .. max_nfc``.

    The model's squared estimate is ``Σ_runs (Σ_{c in run} w(c) e(c))²`` over runs of cached steps,
    ``e`` from ``segment`` and ``w`` = ``sensitivity``. Dynamic programming over the positions of the
    full steps (the first ``warmup`` fixed): a run's error depends only on the full steps before it
    (at most ``keep + 1``; for ``keep = 2`` the third is taken from the best path so far, which
    makes the search exact for ``keep`` 0-1 and near-exact for 2). At most ``max_gap - 1``
    cached steps in a row.
    """
    w = np.asarray(sensitivity, dtype=np.float64)
    # state: tuple of the last full steps (latest first, up to 2) -> (cost, full steps of the best path)
    layer: dict[tuple[int, ...], tuple[float, tuple[int, ...]]] = {
        tuple(range(warmup - 1, max(-1, warmup - 3), -1)): (0.0, tuple(range(warmup)))
    }
    best: dict[int, tuple[float, tuple[int, ...]]] = {}
    runs: dict[tuple[int, ...], np.ndarray] = {}
    for n in range(warmup, max_nfc + 1):
        nxt: dict[tuple[int, ...], tuple[float, tuple[int, ...]]] = {}
        for state, (cost, path) in layer.items():
            a = state[0]
            fulls = tuple(reversed(path[-(keep + 1) :]))
            run = runs.get(fulls)
            if run is None:  # run[j]: weighted error of the cached steps a+1 .. a+j
                seg = segment(fulls, max_gap) * w[a + 1 : a + 1 + max_gap]
                run = runs[fulls] = np.concatenate([[0.0], np.cumsum(seg)])
            seg_len = len(run) - 1
            if num_steps - 1 - a <= seg_len:  # finish here: cache every remaining step
                total = cost + run[num_steps - 1 - a] ** 2
                if n not in best or total < best[n][0]:
                    best[n] = (total, path)
            if n == max_nfc:
                continue
            for f in range(a + 1, min(a + max_gap, num_steps - 1) + 1):
                new_cost = cost + run[f - a - 1] ** 2
                key = (f, a)
                if key not in nxt or new_cost < nxt[key][0]:
                    nxt[key] = (new_cost, (*path, f))
        layer = nxt
        if not layer:
            break
    return {n: tuple(i in set(path) for i in range(num_steps)) for n, (_, path) in best.items()}


def mask_error(mask: Sequence[bool], segment: Segment, sensitivity: Sequence[float], *, keep: int) -> float:
    """The squared error estimate :func:`optimal_masks` minimises, for any ``mask`` (its first step full):
    ``Σ_runs (Σ_{c in run} w(c) e(c))²``, each run's ``e`` from ``segment`` given the full steps before it."""
    w = np.asarray(sensitivity, dtype=np.float64)
    fulls = [i for i, full in enumerate(mask) if full]
    if not fulls or fulls[0] != 0:
        raise ValueError("a mask's first step must be full")
    total = 0.0
    for j, f in enumerate(fulls):
        stop = fulls[j + 1] if j + 1 < len(fulls) else len(mask)
        length = stop - f - 1
        if length:
            before = tuple(reversed(fulls[max(0, j - keep) : j + 1]))  # latest first, up to keep + 1
            total += float(np.dot(segment(before, length)[:length], w[f + 1 : stop])) ** 2
    return total


def split_budget(
    errors: Sequence[dict[int, float]], costs: Sequence[float], budget: float, num_steps: int, *, iterations: int = 100
) -> tuple[int, ...]:
    """Per unit, how many of ``num_steps`` steps to compute so that the computed fraction of the units'
    FLOPs, ``Σ_u cost_u n_u / (Σ_u cost_u · S)``, stays within ``budget``: the Lagrangian split.

    ``errors[u]`` maps a number of full steps ``n`` to unit ``u``'s estimated error with its best mask
    of ``n`` full steps (e.g. :func:`mask_error` of :func:`optimal_masks`' masks). For a multiplier
    ``lam`` each unit takes ``argmin_n errors[u][n] + lam · cost_u · n`` (fewer steps on a tie); the
    smallest ``lam`` whose choice fits the budget is found by bisection, and what budget is left is
    then spent greedily (the largest error drop per FLOP that fits). Exact where the budget falls on
    a point of the units' lower convex hulls; elsewhere a knapsack gap remains, which the
    confirmation runs and local moves of the search are for.

    Example:
        >>> a, b = {2: 4.0, 3: 1.0, 4: 0.0}, {2: 9.0, 3: 2.0, 4: 0.0}
        >>> split_budget([a, b], [1.0, 1.0], budget=0.5, num_steps=6)
        (3, 3)
    """
    costs_ = [float(c) for c in costs]
    if len(costs_) != len(errors) or not errors or any(not table for table in errors):
        raise ValueError("split_budget needs one non-empty error table and one cost per unit")
    limit = budget * sum(costs_) * num_steps * (1 + 1e-12)

    def choose(lam: float) -> list[int]:
        return [min(table, key=lambda n: (table[n] + lam * c * n, n)) for table, c in zip(errors, costs_, strict=True)]

    def spend(choice: list[int]) -> float:
        return sum(c * n for c, n in zip(costs_, choice, strict=True))

    if spend([min(table) for table in errors]) > limit:
        raise ValueError(f"budget {budget} is below the fewest full steps every unit's table allows")
    low, high = 0.0, 1.0
    if spend(choose(0.0)) <= limit:
        return tuple(choose(0.0))
    while spend(choose(high)) > limit:
        high *= 2.0
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (low, mid) if spend(choose(mid)) <= limit else (mid, high)
    return tuple(_fill(choose(high), errors, costs_, limit))


def _fill(choice: list[int], errors: Sequence[dict[int, float]], costs: list[float], limit: float) -> list[int]:
    """Spend what is left of ``limit`` on the moves to more full steps that drop the error most per FLOP."""
    while True:
        left = limit - sum(c * n for c, n in zip(costs, choice, strict=True))
        moves = [
            ((table[n] - table[m]) / (c * (m - n)), u, m)
            for u, (table, c, n) in enumerate(zip(errors, costs, choice, strict=True))
            for m in table
            if m > n and c * (m - n) <= left and table[m] < table[n]
        ]
        if not moves:
            return choice
        _, u, m = max(moves)
        choice[u] = m
