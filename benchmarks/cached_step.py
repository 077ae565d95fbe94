"""Where a cached step's time goes, per op, and what other forms of the predictor arithmetic cost.

    python benchmarks/cached_step.py                      # 256 tokens, taylor m=2 and rfe m=2
    python benchmarks/cached_step.py --tokens 64 --rounds 20 --generations 3

Part 1: ``torch.profiler`` over three cached steps (transformer calls 7-9 of a 20-step generation,
interval 4 after a warm-up of 2) of each method on the random DiT of ``runtime_methods.py``, the
ops sorted by their own CPU time.

Part 2: the predictor arithmetic of all 24 units on the real cache state those generations left
(two steps after the last full one), in several forms, interleaved round by round; median and
minimum (the minimum is the least disturbed by other jobs on a loaded machine):

- ``session``: what the runtime does (``CacheSession._predict``: ``addcmul`` chains over the
  differences with 0-d coefficient tensors; RFE with its norm from the Gram entries);
- ``scalar weights``: the same sums with Python-float coefficients (``add(alpha=)``), RFE's
  per-sample weights as one ``(B, m)`` tensor and the input change into a reused buffer;
- ``output buffers``: as ``scalar weights``, written into one preallocated output per unit;
- ``stacked (bmm)``: the differences kept as one ``(m+1, ...)`` tensor and the forecast one batched
  matrix product of the coefficient row with it, no intermediate pass.

Part 3: the same forms (but the stacked one) as the session's prediction in real generations,
interleaved with the skeleton-alone run and FORA (``runtime_methods.py``'s attainable run): the
median cached step, and whether the output equals the session form's. Timed alone (part 2) a
form runs on a cache-hot state; inside a generation the skeleton runs between units, which is
what counts.

The allocator is pinned as in ``runtime_methods.py`` (``MALLOC_MMAP_THRESHOLD_``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from runtime_methods import SkeletonOnly, StepTimer, _interval_pattern, pin_allocator  # this script's folder

STEPS = 20
METHODS = {"taylorseer-m2": {"method": "taylorseer", "order": 2}, "rfe-m2": {"method": "rfe", "order": 2}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256, help="image tokens (64 or 256)")
    parser.add_argument("--rounds", type=int, default=40, help="part 2: interleaved rounds")
    parser.add_argument("--rows", type=int, default=12, help="part 1: ops shown per method")
    parser.add_argument("--generations", type=int, default=2, help="part 3: interleaved rounds of generations")
    args = parser.parse_args()
    pin_allocator()
    import rfcache
    from rfcache.models.toy import random_dit_pipeline
    from rfcache.runtime.api import get_session

    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    pipe = random_dit_pipeline(sample_size=round(args.tokens**0.5) * 2)
    print(f"random DiT 384x12, {args.tokens} tokens, CFG batch 2, 1 thread, torch {torch.__version__}")
    states: dict[str, tuple[Any, list[tuple[Any, Any, torch.Tensor]]]] = {}
    for name, params in METHODS.items():
        rfcache.enable(pipe, **params, interval=4, share_conditioning=True)
        try:
            table = profile_cached_steps(pipe, first=6, last=8, rows=args.rows)
            session = get_session(pipe)
            branch = session._branches[0]  # kept: disable() resets the session, not this state
        finally:
            rfcache.disable(pipe)
        print(f"\nthree cached steps, {name} (torch.profiler, own CPU time; the scheduler's two steps between)")
        print(table)
        session._step = branch.last_full + 2
        session._branches = [branch]
        units = [(u, branch.units[u.index]) for u in session.units]
        # the input at the cached step (RFE reads it): the one at the last full step, moved by 1 %
        states[name] = (session, [(u, st, _moved(st)) for u, st in units])
    forms = predictor_forms(states)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, (session, units) in states.items():
            for form, fn in forms.items():
                start = time.perf_counter()
                [fn(session, u, st, x) for u, st, x in units]
                times.setdefault((name, form), []).append(time.perf_counter() - start)
    print(f"\npredictor arithmetic of all units, one cached step, {args.rounds} interleaved rounds (ms)")
    print(f"{'method':<15} {'form':<16} {'median':>7} {'min':>7} {'max rel. diff':>14}")
    for (name, form), values in times.items():
        session, units = states[name]
        diff = max(
            float((forms[form](session, u, st, x) - ref).abs().max() / ref.abs().max())
            for u, st, x in units
            for ref in [session._predict(u, st, x)]
        )
        print(f"{name:<15} {form:<16} {statistics.median(values) * 1e3:>7.2f} {min(values) * 1e3:>7.2f} {diff:>14.1e}")
    in_generation(pipe, forms, rounds=args.generations)


def in_generation(pipe: Any, forms: dict[str, Form], *, rounds: int) -> None:
    """Part 3: each form as the session's prediction in real generations, interleaved (median cached step)."""
    import rfcache
    from rfcache.runtime.session import CacheSession

    pattern = _interval_pattern(STEPS)
    skeleton = SkeletonOnly(pipe, pattern)
    original = CacheSession._predict
    runs: list[tuple[str, str, dict[str, Any] | None]] = [
        ("skeleton alone", "", None),
        ("fora", "", {"method": "fora"}),
    ]
    runs += [(name, form, params) for name, params in METHODS.items() for form in forms if form != "stacked (bmm)"]
    steps: dict[tuple[str, str], list[float]] = {}
    images: dict[tuple[str, str], torch.Tensor] = {}
    for round_index in range(rounds + 1):  # round 0 warms up
        for name, form, params in runs:
            if params is None:
                skeleton.attach()
            else:
                if form and form != "session":
                    fn = forms[form]
                    CacheSession._predict = lambda self, unit, state, x, fn=fn: fn(self, unit, state, x)  # type: ignore[method-assign]
                rfcache.enable(pipe, **params, interval=4, share_conditioning=True)
            timer = StepTimer(pipe.transformer)
            try:
                generator = torch.Generator().manual_seed(0)
                out = pipe(
                    class_labels=[3],
                    num_inference_steps=STEPS,
                    guidance_scale=2.0,
                    generator=generator,
                    output_type="pt",
                )
            finally:
                timer.remove()
                CacheSession._predict = original  # type: ignore[method-assign]
                if params is None:
                    skeleton.detach()
                else:
                    rfcache.disable(pipe)
            images[(name, form)] = out.images
            if round_index:
                steps.setdefault((name, form), []).extend(
                    t for c, t in zip(pattern, timer.times, strict=True) if c == "P"
                )
    print(f"\ncached step in generations, {rounds} interleaved rounds of {STEPS} steps (ms; median, min)")
    for (name, form), values in steps.items():
        same = ""
        if form:
            equal = torch.equal(images[(name, form)], images[(name, "session")])
            same = f"  output {'equal to' if equal else 'differs from'} the session form's"
        print(f"{name:<15} {form:<16} {statistics.median(values) * 1e3:>7.2f} {min(values) * 1e3:>7.2f}{same}")


def profile_cached_steps(pipe: Any, *, first: int, last: int, rows: int) -> str:
    """The per-op table of transformer calls ``first`` to ``last`` (0-based) of one generation."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    calls = [0]

    def before(*_: Any) -> None:
        if calls[0] == first:
            prof.start()

    def after(*_: Any) -> None:
        if calls[0] == last:
            prof.stop()
        calls[0] += 1

    handles = [
        pipe.transformer.register_forward_pre_hook(before, prepend=True),
        pipe.transformer.register_forward_hook(after),
    ]
    try:
        generator = torch.Generator().manual_seed(0)
        pipe(class_labels=[3], num_inference_steps=STEPS, guidance_scale=2.0, generator=generator)
    finally:
        for h in handles:
            h.remove()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def _moved(state: Any) -> torch.Tensor:
    return (state.input_at_full if state.input_at_full is not None else state.differences[0][0]) * 1.01


Form = Callable[[Any, Any, Any, torch.Tensor], torch.Tensor]  # (session, unit, state, input) -> prediction


def predictor_forms(states: dict[str, tuple[Any, list[tuple[Any, Any, torch.Tensor]]]]) -> dict[str, Form]:
    """Each form as ``fn(session, unit, state, input) -> prediction`` (single-output units)."""
    from rfcache.runtime.predictors import per_sample_norm, taylor_coefficients

    stacks = {id(st): torch.stack(st.differences[0]) for _, units in states.values() for _, st, _ in units}
    buffers: dict[tuple[int, str], torch.Tensor] = {}

    def buffer(st: Any, like: torch.Tensor, role: str) -> torch.Tensor:
        buf = buffers.get((id(st), role))
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = buffers[(id(st), role)] = torch.empty_like(like)
        return buf

    def session_form(session: Any, u: Any, st: Any, x: torch.Tensor) -> torch.Tensor:
        return session._predict(u, st, x)

    def rfe_weights(session: Any, u: Any, st: Any, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Per-sample weights of D_1..D_m, ``(B, m)``: ``s ||x - x_full|| c_i / ||d(k)||``."""
        _, _, pairs = session._step_coefficients(session._step - st.last_full, len(values), st.differences[0][0])
        change = per_sample_norm(torch.sub(x, st.input_at_full, out=buffer(st, x, "input")))
        scale = session._ratio(u, st, 0) * change / (st.grams[0] @ pairs).clamp_min(1e-24).sqrt()
        return torch.outer(scale, values[1:])

    def scalar_form(session: Any, u: Any, st: Any, x: torch.Tensor, *, into: bool = False) -> torch.Tensor:
        d, k = st.differences[0], session._step - st.last_full
        c = taylor_coefficients(k, len(d))
        out = buffer(st, d[0], "output") if into else None
        if session.config.predictor == "taylor":
            pred = torch.add(d[0], d[1], alpha=c[1], out=out)
            for i in range(2, len(d)):
                pred.add_(d[i], alpha=c[i])
            return pred
        w = rfe_weights(session, u, st, x, torch.tensor(c)).to(d[0].dtype)
        w = w.view(w.shape[0], *([1] * (d[0].ndim - 1)), w.shape[1])
        pred = torch.addcmul(d[0], d[1], w[..., 0], out=out)
        for i in range(2, len(d)):
            pred.addcmul_(d[i], w[..., i - 1])
        return pred

    def stacked_form(session: Any, u: Any, st: Any, x: torch.Tensor) -> torch.Tensor:
        stack, k = stacks[id(st)], session._step - st.last_full
        values = torch.tensor(taylor_coefficients(k, stack.shape[0]))
        batch = stack.shape[1]
        if session.config.predictor == "taylor":
            w = values.expand(batch, -1)
        else:
            w = torch.cat([torch.ones(batch, 1), rfe_weights(session, u, st, x, values)], dim=1)
        rows = torch.bmm(w.to(stack.dtype).unsqueeze(1), stack.flatten(2).transpose(0, 1))
        return rows.view_as(stack[0])

    return {
        "session": session_form,
        "scalar weights": scalar_form,
        "output buffers": lambda session, u, st, x: scalar_form(session, u, st, x, into=True),
        "stacked (bmm)": stacked_form,
    }


if __name__ == "__main__":
    main()
