"""What the context-parallel reductions cost per cached step: two gloo ranks on CPU, tiny Flux and Wan.

    PYTHONPATH=src:. python benchmarks/context_parallel.py                 # Ulysses, 8 steps, 5 rounds
    PYTHONPATH=src:. python benchmarks/context_parallel.py --mode ring --rounds 9

Under context parallelism the cache reduces over the group whatever it takes over the sequence
(rfcache/runtime/parallel.py). This script runs each method on two ranks twice per round,
interleaved: as shipped (reduced), and with the group hidden from the session (``per shard``:
the same arithmetic on the shard, no collective, no agreement; wrong numbers, the overhead's
baseline). It reports, per method, the median wall time of a cached step's transformer call
(rank 0; median over rounds of the per-round median), the difference, and the number of
collectives the cache issued per cached step. Wall time, measured; the CPU workarounds of
tests/runtime/_cp_harness.py apply. On two shared CPU cores and a loopback gloo group this is an
upper bound of what NCCL on a GPU pair costs per collective.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any
from unittest import mock

import torch

STEPS = 8
METHODS: dict[str, dict[str, Any]] = {
    "taylorseer": {"method": "taylorseer", "interval": 3, "warmup": 1, "order": 2},
    "rfe": {"method": "rfe", "interval": 3, "warmup": 2, "order": 2},
    "rfc": {"method": "rfc", "tau": 0.2, "warmup": 2, "order": 2, "max_cached": 3},
}


def _time_cached_steps(pipe: Any, family: str, kwargs: dict[str, Any], counter: list[int]) -> tuple[float, float]:
    """One generation: the median cached-step transformer call (s) and the collectives per cached step."""
    import rfcache
    from rfcache.models.tiny import tiny_pipeline_call_kwargs

    session = rfcache.enable(pipe, **kwargs)
    times: list[tuple[float, int]] = []
    start: list[float] = []

    def before(*_: Any, **__: Any) -> None:
        counter[0] = 0
        start.append(time.perf_counter())

    def after(*_: Any, **__: Any) -> None:
        branch = session._branches[session._branch_index]
        if not branch.full:
            times.append((time.perf_counter() - start[-1], counter[0]))

    handles = [pipe.transformer.register_forward_pre_hook(before), pipe.transformer.register_forward_hook(after)]
    try:
        pipe(
            **tiny_pipeline_call_kwargs(family),
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        )
    finally:
        for h in handles:
            h.remove()
        rfcache.disable(pipe)
    return statistics.median(t for t, _ in times), statistics.mean(c for _, c in times)


def _worker(rank: int, world: int, mode: str, rounds: int) -> dict[tuple[str, str], dict[str, float]]:
    from tests.runtime._cp_harness import enable_context_parallel

    from rfcache.models.tiny import build_tiny_pipeline
    from rfcache.runtime.parallel import ContextGroup

    counter = [0]
    total, agree = ContextGroup.sum, ContextGroup.any

    def counted_sum(self: Any, partial: torch.Tensor) -> torch.Tensor:
        counter[0] += 1
        return total(self, partial)

    def counted_any(self: Any, flag: bool, device: Any = "cpu") -> bool:
        counter[0] += 1
        return agree(self, flag, device)

    results = {}
    with mock.patch.object(ContextGroup, "sum", counted_sum), mock.patch.object(ContextGroup, "any", counted_any):
        for family in ("flux", "wan"):
            pipe = build_tiny_pipeline(family)
            enable_context_parallel(pipe.transformer, mode, world)
            for name, kwargs in METHODS.items():
                reduced, shard, calls = [], [], []
                for _ in range(rounds):
                    t, c = _time_cached_steps(pipe, family, kwargs, counter)
                    reduced.append(t)
                    calls.append(c)
                    with mock.patch("rfcache.runtime.session.context_group", return_value=None):
                        shard.append(_time_cached_steps(pipe, family, kwargs, counter)[0])
                results[family, name] = {
                    "reduced": statistics.median(reduced),
                    "shard": statistics.median(shard),
                    "collectives": statistics.mean(calls),
                }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("ulysses", "ring"), default="ulysses")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from tests.runtime._cp_harness import run_ranks

    results = run_ranks(_worker, args.mode, args.rounds, world=2, timeout=1800)[0]
    print(f"context parallelism: {args.mode}, 2 gloo ranks on CPU, {STEPS} steps, {args.rounds} rounds (wall time)")
    print(
        "| family | method | cached step, reduced (ms) | per shard (ms) | overhead (ms) | collectives per cached step |"
    )
    print("|---|---|---|---|---|---|")
    for (family, name), r in results.items():
        overhead = (r["reduced"] - r["shard"]) * 1e3
        print(
            f"| {family} | {name} | {r['reduced'] * 1e3:.2f} | {r['shard'] * 1e3:.2f} | {overhead:+.2f} "
            f"| {r['collectives']:.0f} |"
        )


if __name__ == "__main__":
    main()
