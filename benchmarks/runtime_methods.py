"""rfcache's runtime methods at matched cost, and wall-clock speed-up on a larger random DiT.

    python benchmarks/runtime_methods.py                 # toy model, 50 DDIM steps, NFC 14/10/7
    python benchmarks/runtime_methods.py --speed-only    # wall clock at 64 and 256 tokens
    python benchmarks/runtime_methods.py --speed-only --tokens 64 --steps 20 --repeats 1   # quick look

Part 1 (embedded toy model) is a thin front to :func:`rfcache.evaluate.bench.run_bench` (the
engine of ``rfc-bench``) with rfcache's own methods only: the same seeds and classes for every
method; interval methods take the interval schedule of each NFC, ``rcs``/``rfc`` get the ``tau``
whose measured FLOP fraction matches it.

Part 2 (a random DiT sized like DiT-S: hidden 384, 12 layers, CFG batch 2, NFC 14 by TaylorSeer's
placement): every run in one process, interleaved after a warm-up round, median of ``--repeats``.
Per method: seconds, speed-up against the unmodified pipeline and against the pipeline with shared
conditioning alone (``method="none", share_conditioning=True``), the FLOP ideal (1 / FLOP
fraction, analytic) and the *attainable* limit: the speed-up if every cached step cost only the
skeleton (units returning constants, conditioning served) and every full step what it costs with
shared conditioning, all measured in the same run. Then the parts of a cached step (ms, median).

Allocator: glibc returns large freed blocks to the OS and faults them in again at every step,
which made the 256-token full step 21 % slower; the script re-executes itself with
``MALLOC_MMAP_THRESHOLD_=33554432`` (32 MiB) unless it is set already or ``--system-malloc`` is
given, and prints which it ran under.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

MMAP_THRESHOLD = "33554432"
STEPS = 50
METHODS = ("fora", "taylorseer-m1", "taylorseer-m2", "rfe-m1", "rfe-m2", "rcs", "rfc")
# name -> enable() arguments; interval 4 after a warm-up of 2 is NFC 14 at 50 steps
SPEED_METHODS: dict[str, dict[str, Any]] = {
    "fora": {"method": "fora", "interval": 4},
    "taylorseer-m1": {"method": "taylorseer", "interval": 4, "order": 1},
    "taylorseer-m2": {"method": "taylorseer", "interval": 4, "order": 2},
    "rfe-m1": {"method": "rfe", "interval": 4, "order": 1},
    "rfe-m2": {"method": "rfe", "interval": 4, "order": 2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20, help="part 1: samples per method")
    parser.add_argument("--nfc", default="14,10,7", help="part 1: NFC targets")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (median)")
    parser.add_argument("--speed-only", action="store_true", help="skip part 1")
    parser.add_argument("--tokens", default="64,256", help="part 2: image tokens (64 = 16x16 latent, 256 = 32x32)")
    parser.add_argument("--steps", type=int, default=STEPS, help="part 2: sampling steps (NFC scales with them)")
    parser.add_argument("--methods", default=",".join(SPEED_METHODS), help="part 2: methods")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--system-malloc", action="store_true", help="keep glibc's default large-allocation handling")
    args = parser.parse_args()
    if not args.system_malloc and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)  # glibc reads it at start-up only
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.speed_only:
        from rfcache.evaluate.bench import BenchConfig, run_bench
        from rfcache.evaluate.tables import format_table

        nfc = tuple(int(x) for x in args.nfc.split(","))
        result = run_bench(BenchConfig(nfc=nfc, methods=METHODS, samples=args.samples, repeats=0))
        print(f"\nToy DiT, {STEPS} DDIM steps, {args.samples} samples, guidance 2: error to full compute")
        print(format_table(result))
    malloc = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    print(
        f"\nallocator: {'MALLOC_MMAP_THRESHOLD_=' + malloc if malloc else 'glibc default'}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    methods = [m for m in args.methods.split(",") if m]
    for tokens in (int(x) for x in args.tokens.split(",")):
        speed_report(tokens, steps=args.steps, repeats=args.repeats, methods=methods)


# -- part 2 -----------------------------------------------------------------------------------------


class StepTimer:
    """Wall time of every transformer call (the session's own hooks included)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.times: list[float] = []
        self._start = 0.0
        self._handles = [
            model.register_forward_pre_hook(self._before, prepend=True),
            model.register_forward_hook(self._after),
        ]

    def _before(self, *_: Any) -> None:
        self._start = time.perf_counter()

    def _after(self, *_: Any) -> None:
        self.times.append(time.perf_counter() - self._start)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def speed_report(tokens: int, *, steps: int, repeats: int, methods: list[str]) -> None:
    import rfcache
    from rfcache.models.toy import random_dit_pipeline

    side = round(tokens**0.5) * 2  # patch 2
    pipe = random_dit_pipeline(sample_size=side)
    model = pipe.transformer

    def generate() -> None:
        pipe(
            class_labels=[3], num_inference_steps=steps, guidance_scale=2.0, generator=torch.Generator().manual_seed(0)
        )

    runs: dict[str, dict[str, Any] | None] = {"unmodified": None, "shared conditioning": {"method": "none"}}
    runs.update({m: SPEED_METHODS[m] for m in methods})
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    step_times: dict[str, list[tuple[str, float]]] = {name: [] for name in runs}
    fractions: dict[str, float] = {}
    for round_index in range(repeats + 1):  # round 0 warms up
        for name, params in runs.items():
            if params is not None:
                rfcache.enable(pipe, **params, share_conditioning=True)
            timer = StepTimer(model)
            try:
                start = time.perf_counter()
                generate()
                elapsed = time.perf_counter() - start
                pattern = rfcache.summary(pipe).pattern if params is not None else "C" * steps
                if params is not None:
                    fractions[name] = rfcache.summary(pipe).flops_fraction
            finally:
                timer.remove()
                if params is not None:
                    rfcache.disable(pipe)
            if round_index:
                seconds[name].append(elapsed)
                step_times[name] += list(zip(pattern, timer.times, strict=True))
    parts = cached_step_parts(pipe, steps=steps, repeats=max(repeats, 1))

    median = {name: statistics.median(v) for name, v in seconds.items()}
    full_shared = _median_step(step_times["shared conditioning"], "C")
    nfc = _nfc(steps)
    # the ceiling: full steps as they cost with shared conditioning, cached steps costing the skeleton alone
    attainable_s = nfc * full_shared + (steps - nfc) * parts["skeleton alone (units free, conditioning shared)"]
    attainable_s += parts["shared conditioning, one batched pass for all steps"]
    base, shared = median["unmodified"], median["shared conditioning"]
    print(
        f"\nrandom DiT 384x12, {tokens} tokens, CFG batch 2, {steps} DDIM steps, NFC {nfc} (wall clock, CPU, "
        f"median of {repeats})"
    )
    print(
        f"{'method':<20} {'seconds':>8} {'vs unmodified':>14} {'vs shared cond.':>16} "
        f"{'FLOP ideal':>11} {'attainable':>11}"
    )
    for name in runs:
        ideal = f"{1 / fractions[name]:.2f}x" if name in fractions and name != "shared conditioning" else ""
        limit = f"{base / attainable_s:.2f}x" if name in fractions and name != "shared conditioning" else ""
        print(
            f"{name:<20} {median[name]:>8.2f} {base / median[name]:>13.2f}x {shared / median[name]:>15.2f}x "
            f"{ideal:>11} {limit:>11}"
        )
    print(f"\nparts of a step, {tokens} tokens (ms, median)")
    print(f"{'full step, unmodified':<58} {_median_step(step_times['unmodified'], 'C') * 1e3:>7.2f}")
    print(f"{'full step, shared conditioning':<58} {full_shared * 1e3:>7.2f}")
    for name in methods:
        print(f"{'cached step, ' + name:<58} {_median_step(step_times[name], 'P') * 1e3:>7.2f}")
    if "fora" in methods:  # hooks, step detection, FLOP counting: what the session adds to the bare skeleton
        bookkeeping = _median_step(step_times["fora"], "P") - parts["skeleton alone (units free, conditioning shared)"]
        print(f"{'session bookkeeping (cached fora step - skeleton alone)':<58} {bookkeeping * 1e3:>7.2f}")
    for part, value in parts.items():
        print(f"{part:<58} {value * 1e3:>7.2f}")


def _nfc(steps: int, interval: int = 4, warmup: int = 2) -> int:
    from rfcache.runtime.policies import IntervalPolicy

    policy = IntervalPolicy(interval=interval, warmup=warmup).new_state()
    full, last = 0, -1
    for step in range(steps):
        if policy.decide(step, step - last if last >= 0 else step + 1, None):
            full, last = full + 1, step
    return full


def _median_step(entries: list[tuple[str, float]], kind: str) -> float:
    values = [t for k, t in entries if k == kind]
    return statistics.median(values) if values else float("nan")


def cached_step_parts(pipe: Any, *, steps: int, repeats: int) -> dict[str, float]:
    """Seconds of the parts of a cached step, each timed on its own over the same inputs."""
    import rfcache
    from rfcache.models.hooks import attach_module_hooks, attach_unit_hooks, detach_unit_hooks
    from rfcache.runtime.api import get_session
    from rfcache.runtime.conditioning import build_conditioning_store

    model = pipe.transformer
    adapter = rfcache.get_adapter(model)
    pipe.scheduler.set_timesteps(steps)
    x = torch.randn(2, model.config.in_channels, model.config.sample_size, model.config.sample_size)
    t = pipe.scheduler.timesteps[steps // 2].expand(2)
    inputs = {"hidden_states": x, "timestep": t, "class_labels": torch.tensor([3, 10])}
    outputs: dict[int, Any] = {}

    def record(unit: Any, original: Callable, args: tuple, kwargs: dict) -> Any:
        outputs[unit.index] = original(*args, **kwargs)
        return outputs[unit.index]

    attach_unit_hooks(model, adapter, record, name="bench")
    model(**inputs)
    detach_unit_hooks(model, name="bench")
    first = dict(inputs, timestep=pipe.scheduler.timesteps[0].expand(2))

    def timed(fn: Callable[[], Any]) -> float:
        fn()
        values = []
        for _ in range(max(repeats, 1) * 5):
            start = time.perf_counter()
            fn()
            values.append(time.perf_counter() - start)
        return statistics.median(values)

    parts: dict[str, float] = {}
    store = build_conditioning_store(model, adapter, first, pipe.scheduler)
    assert store is not None
    batched = timed(lambda: build_conditioning_store(model, adapter, first, pipe.scheduler))
    parts["shared conditioning, one batched pass for all steps"] = batched
    parts["shared conditioning, per step"] = batched / steps
    row = steps // 2
    paths = adapter.conditioning_paths(model)
    attach_unit_hooks(model, adapter, lambda unit, o, a, k: outputs[unit.index], name="bench")
    try:
        parts["skeleton alone (units free, conditioning per step)"] = timed(lambda: model(**inputs))
        attach_module_hooks(model, paths, lambda path, o, a, k: store.outputs[path][row], name="bench")
        parts["skeleton alone (units free, conditioning shared)"] = timed(lambda: model(**inputs))
    finally:
        detach_unit_hooks(model, name="bench")
    parts["conditioning per step (difference of the two)"] = (
        parts["skeleton alone (units free, conditioning per step)"]
        - parts["skeleton alone (units free, conditioning shared)"]
    )
    # predictor arithmetic and the guard, on the session's own state after a real generation
    rfcache.enable(pipe, method="taylorseer", interval=4, order=2)
    try:
        pipe(
            class_labels=[3], num_inference_steps=steps, guidance_scale=2.0, generator=torch.Generator().manual_seed(0)
        )
        session = get_session(pipe)
        branch = session._branches[0]
        unit_states = list(branch.units.values())
        session._step = branch.last_full + 2
        xs = [outputs[u] for u in range(len(unit_states))]
        parts["predictor arithmetic (taylor m=2, all units)"] = timed(
            lambda: [session._predict(u, s, xi) for u, s, xi in zip(session.units, unit_states, xs, strict=True)]
        )
        out = model(**inputs).sample
        parts["non-finite guard (once per step)"] = timed(lambda: bool(torch.isfinite(out).all()))
    finally:
        rfcache.disable(pipe)
    return parts


if __name__ == "__main__":
    main()
