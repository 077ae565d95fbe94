"""rfcache's runtime methods at matched cost, and wall-clock speed-up on a larger random DiT.

    python benchmarks/runtime_methods.py                 # toy model, 50 DDIM steps, NFC 14/10/7
    python benchmarks/runtime_methods.py --speed-only    # wall clock at 64 and 256 tokens
    python benchmarks/runtime_methods.py --speed-only --tokens 64 --steps 20 --repeats 1   # quick look
    python benchmarks/runtime_methods.py --speed-only --compile --methods fora,taylorseer-m2,rfe-m2

Part 1 (embedded toy model) is a thin front to :func:`rfcache.evaluate.bench.run_bench` (the
engine of ``rfc-bench``) with rfcache's own methods only: the same seeds and classes for every
method; interval methods take the interval schedule of each NFC, ``rcs``/``rfc`` get the ``tau``
whose measured FLOP fraction matches it.

Part 2 (a random DiT sized like DiT-S: hidden 384, 12 layers, CFG batch 2, NFC 14 by TaylorSeer's
placement): every run in one process, interleaved after a warm-up round, median of ``--repeats``.
Per method: seconds, speed-up against the unmodified pipeline and against the pipeline with shared
conditioning alone (``method="none", share_conditioning=True``), the FLOP ideal (1 / FLOP
fraction, analytic), the *attainable* limit and the fraction of the ideal reached. The attainable
limit is a run of its own in the same rounds: the methods' schedule with full steps computed (with
shared conditioning) and every cached step costing the skeleton alone (each unit returns its
output of the last full step, no session: FORA's output without FORA's bookkeeping), so it does a
subset of every method's work. Then the parts of a step, medians over the timed rounds' steps: a
cached step = skeleton alone + session bookkeeping (FORA - skeleton alone) + predictor arithmetic
(method - FORA), which sum to it by construction; and parts timed on their own between rounds.

``--compile`` adds each method with ``enable(..., compile=True)`` (torch.compile, inductor on CPU)
and the unmodified transformer under ``torch.compile``, each on a pipeline of its own (the same
seeded weights) enabled once, so only the warm-up round compiles; the compile time (warm-up minus
median) is reported apart from the timing.

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
    # RFE m=2 as profiles: the same interval as a step mask, and per unit with each block's full
    # steps shifted by its index (_per_unit.py: equal FLOPs, almost every step a different mix)
    "rfe-m2-mask": {"profile": "step-mask"},
    "rfe-m2-per-unit": {"profile": "per-unit"},
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
    parser.add_argument(
        "--compile", action="store_true", help="part 2: also each method with compile=True (torch.compile, inductor)"
    )
    parser.add_argument("--system-malloc", action="store_true", help="keep glibc's default large-allocation handling")
    args = parser.parse_args()
    if not args.system_malloc:
        pin_allocator()
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
        speed_report(tokens, steps=args.steps, repeats=args.repeats, methods=methods, compile=args.compile)


def pin_allocator() -> None:
    """Re-execute this script with ``MALLOC_MMAP_THRESHOLD_`` pinned, unless it is set already."""
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)  # glibc reads it at start-up only


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


class Run:
    """One row of the speed table: a pipeline and what is switched on around each of its generations.

    ``params``: ``enable()`` arguments, enabled before and disabled after every generation (the
    eager rows, which share one pipeline); ``kept``: enabled once on a pipeline of its own and left
    on (the compiled rows: a fresh ``torch.compile`` per round would compile again every round).
    """

    def __init__(
        self,
        name: str,
        pipe: Any,
        params: dict[str, Any] | None = None,
        *,
        kept: bool = False,
        skeleton: SkeletonOnly | None = None,
    ) -> None:
        self.name, self.pipe, self.params, self.kept, self.skeleton = name, pipe, params, kept, skeleton
        if kept:
            import rfcache

            rfcache.enable(pipe, **(params or {}))
        self.pattern = ""
        self.fraction: float | None = None

    def begin(self) -> None:
        import rfcache

        if self.skeleton is not None:
            self.skeleton.attach()
        elif self.params is not None and not self.kept:
            rfcache.enable(self.pipe, **self.params)

    def end(self, steps: int) -> None:
        import rfcache

        if self.skeleton is not None:
            self.skeleton.detach()
            self.pattern = self.skeleton.pattern
        elif self.params is not None:
            summary = rfcache.summary(self.pipe)
            self.pattern, self.fraction = summary.pattern, summary.flops_fraction
            if not self.kept:
                rfcache.disable(self.pipe)
        else:
            self.pattern = "C" * steps


def speed_report(tokens: int, *, steps: int, repeats: int, methods: list[str], compile: bool = False) -> None:
    import rfcache
    from rfcache.models.toy import random_dit_pipeline

    sample_size = round(tokens**0.5) * 2  # patch 2
    pipe = random_dit_pipeline(sample_size=sample_size)
    pattern = _interval_pattern(steps)
    parts = StepParts(pipe, steps=steps)
    runs = [Run("unmodified", pipe), Run("shared conditioning", pipe, {"method": "none", "share_conditioning": True})]
    runs.append(Run(ATTAINABLE, pipe, skeleton=SkeletonOnly(pipe, pattern)))
    runs += [Run(m, pipe, {**_params(m, pipe, steps), "share_conditioning": True}) for m in methods]
    if compile:  # each on a pipeline of its own (the same seeded weights), compiled in the warm-up round
        torch._dynamo.reset()
        # the pipelines share the transformer's forward code: two variants each must all stay cached
        torch._dynamo.config.recompile_limit = 4 * (len(methods) + 1)
        plain = random_dit_pipeline(sample_size=sample_size)
        plain.transformer.forward = torch.compile(plain.transformer.forward, fullgraph=True, dynamic=False)
        runs.append(Run(f"unmodified{COMPILED}", plain))
        for m in methods:
            params = {**_params(m, pipe, steps), "share_conditioning": True, "compile": True}
            runs.append(Run(m + COMPILED, random_dit_pipeline(sample_size=sample_size), params, kept=True))
    seconds: dict[str, list[float]] = {run.name: [] for run in runs}
    warmup: dict[str, float] = {}
    step_times: dict[str, list[tuple[str, float]]] = {run.name: [] for run in runs}
    part_times: dict[str, list[float]] = {}
    for round_index in range(repeats + 1):  # round 0 warms up (and compiles); parts are timed after each round
        for run in runs:
            run.begin()
            timer = StepTimer(run.pipe.transformer)
            try:
                start = time.perf_counter()
                run.pipe(
                    class_labels=[3],
                    num_inference_steps=steps,
                    guidance_scale=2.0,
                    generator=torch.Generator().manual_seed(0),
                )
                elapsed = time.perf_counter() - start
            finally:
                timer.remove()
                run.end(steps)
            if round_index:
                seconds[run.name].append(elapsed)
                step_times[run.name] += list(zip(run.pattern, timer.times, strict=True))
            else:
                warmup[run.name] = elapsed
        if round_index:
            for part, value in parts.measure().items():
                part_times.setdefault(part, []).append(value)
    for run in runs:
        if run.kept:
            rfcache.disable(run.pipe)
    fractions = {run.name: run.fraction for run in runs if run.fraction is not None}
    names = [run.name for run in runs]

    median = {name: statistics.median(v) for name, v in seconds.items()}
    part = {name: statistics.median(v) for name, v in part_times.items()}
    base, shared, attainable = median["unmodified"], median["shared conditioning"], median[ATTAINABLE]
    nfc = pattern.count("C")
    print(
        f"\nrandom DiT 384x12, {tokens} tokens, CFG batch 2, {steps} DDIM steps, NFC {nfc} (wall clock, CPU, "
        f"median of {repeats}; attainable: the same schedule with every cached step costing the skeleton "
        "alone, run in the same rounds)"
    )
    print(
        f"{'method':<20} {'seconds':>8} {'vs unmodified':>14} {'vs shared cond.':>16} "
        f"{'FLOP ideal':>11} {'attainable':>11} {'of ideal':>9}"
    )
    for name in names:
        if name == ATTAINABLE or name.endswith(COMPILED):
            continue
        cached = name in fractions and name != "shared conditioning"
        ideal = f"{1 / fractions[name]:.2f}x" if cached else ""
        limit = f"{base / attainable:.2f}x" if cached else ""
        of_ideal = f"{base / median[name] * fractions[name]:.2f}" if cached else ""
        print(
            f"{name:<20} {median[name]:>8.2f} {base / median[name]:>13.2f}x {shared / median[name]:>15.2f}x "
            f"{ideal:>11} {limit:>11} {of_ideal:>9}"
        )
    print(f"{'(attainable run)':<20} {attainable:>8.2f} {base / attainable:>13.2f}x {shared / attainable:>15.2f}x")
    if compile:
        base_compiled = median["unmodified" + COMPILED]
        print(
            f"\ncompiled (enable(..., compile=True); the unmodified transformer under torch.compile), {tokens} "
            "tokens; of ideal: against the unmodified compiled; compile: the warm-up generation's time over the median"
        )
        print(
            f"{'method':<31} {'seconds':>8} {'vs unmodified':>14} {'vs unmod. compiled':>19} "
            f"{'FLOP ideal':>11} {'of ideal':>9} {'compile s':>10}"
        )
        for name in (n for n in names if n.endswith(COMPILED)):
            ideal = f"{1 / fractions[name]:.2f}x" if name in fractions else ""
            of_ideal = f"{base_compiled / median[name] * fractions[name]:.2f}" if name in fractions else ""
            print(
                f"{name:<31} {median[name]:>8.2f} {base / median[name]:>13.2f}x "
                f"{base_compiled / median[name]:>18.2f}x {ideal:>11} {of_ideal:>9} "
                f"{warmup[name] - median[name]:>10.1f}"
            )

    step = {name: _median_step(step_times[name], "P") for name in methods}
    skeleton_step = _median_step(step_times[ATTAINABLE], "P")
    print(f"\nparts of a step, {tokens} tokens (ms, median of the steps of the timed rounds)")
    rows = [
        ("full step, unmodified", _median_step(step_times["unmodified"], "C")),
        ("full step, shared conditioning", _median_step(step_times["shared conditioning"], "C")),
        ("cached step, skeleton alone (units free, conditioning shared)", skeleton_step),
    ]
    rows += [(f"cached step, {name}", step[name]) for name in methods]
    if compile:
        rows.append(("full step, unmodified compiled", _median_step(step_times["unmodified" + COMPILED], "C")))
        rows += [(f"cached step, {name}{COMPILED}", _median_step(step_times[name + COMPILED], "P")) for name in methods]
    if "fora" in methods:  # a cached step = skeleton + session bookkeeping + predictor arithmetic
        rows.append(("  = skeleton alone", skeleton_step))
        rows.append(("  + session bookkeeping (fora - skeleton alone)", step["fora"] - skeleton_step))
        rows += [(f"  + predictor arithmetic, {name} (- fora)", step[name] - step["fora"]) for name in methods[1:]]
    for label, value in rows:
        print(f"{label:<62} {value * 1e3:>7.2f}")
    print(f"\nparts timed on their own between the runs, {tokens} tokens (ms, median)")
    for label, value in part.items():
        print(f"{label:<62} {value * 1e3:>7.2f}")


ATTAINABLE = "attainable"
COMPILED = " (compiled)"


class SkeletonOnly:
    """The methods' schedule with every cached step costing the skeleton alone: at a cached step each
    unit returns its output of the last full step (FORA's prediction, without a session), the
    conditioning modules their step's row of a store built at the first call as the sessions build
    it; full steps compute the units. (Outputs from another generation's state made the skeleton
    about 1 ms per step slower at 64 tokens, so they are this run's own.)"""

    def __init__(self, pipe: Any, pattern: str) -> None:
        import rfcache

        self.pipe, self.pattern = pipe, pattern
        self.outputs: dict[int, Any] = {}
        self.adapter = rfcache.get_adapter(pipe.transformer)
        self.step, self.store, self.handle = -1, None, None

    def attach(self) -> None:
        from rfcache.models.hooks import attach_module_hooks, attach_unit_hooks

        model = self.pipe.transformer
        self.step = -1
        self.handle = model.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        attach_unit_hooks(model, self.adapter, self._call_unit, name="bench")
        attach_module_hooks(model, self.adapter.conditioning_paths(model), self._call_conditioning, name="bench")

    def detach(self) -> None:
        from rfcache.models.hooks import detach_unit_hooks

        detach_unit_hooks(self.pipe.transformer, name="bench")
        if self.handle is not None:
            self.handle.remove()

    def _on_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        from rfcache.runtime.conditioning import build_conditioning_store

        self.step += 1
        if self.step == 0:
            self.store = None
            inputs = {**dict(zip(("hidden_states",), args, strict=False)), **kwargs}
            self.store = build_conditioning_store(module, self.adapter, inputs, self.pipe.scheduler)

    def _call_unit(self, unit: Any, original: Any, args: tuple, kwargs: dict) -> Any:
        if self.pattern[self.step] == "P":
            return self.outputs[unit.index]
        out = self.outputs[unit.index] = original(*args, **kwargs)
        return out

    def _call_conditioning(self, path: str, original: Any, args: tuple, kwargs: dict) -> Any:
        if self.store is None:  # building the store runs these modules
            return original(*args, **kwargs)
        return self.store.outputs[path][self.step]


SKELETON_SHARED = "skeleton alone (units free, conditioning shared)"
BATCHED = "shared conditioning: one batched pass for all steps"


class StepParts:
    """The parts of a cached step, each timed on its own on one step's real inputs and cache state."""

    def __init__(self, pipe: Any, *, steps: int) -> None:
        import rfcache
        from rfcache.runtime.api import get_session

        self.pipe, self.steps = pipe, steps
        model = pipe.transformer
        self.adapter = rfcache.get_adapter(model)
        captured: dict[str, Any] = {}

        def capture(module: Any, args: tuple, kwargs: dict) -> None:
            captured.setdefault("kwargs", {**dict(zip(("hidden_states",), args, strict=False)), **kwargs})

        rfcache.enable(pipe, method="taylorseer", interval=4, order=2)
        handle = model.register_forward_pre_hook(capture, with_kwargs=True)
        try:
            pipe(
                class_labels=[3],
                num_inference_steps=steps,
                guidance_scale=2.0,
                generator=torch.Generator().manual_seed(0),
            )
        finally:
            handle.remove()
        self.session = get_session(pipe)  # its state is kept for the predictor timing
        self.branch = self.session._branches[0]
        rfcache.disable(pipe)
        self.first = captured["kwargs"]
        self.outputs = {u: s.differences[0][0] for u, s in self.branch.units.items()}

    def measure(self, rounds: int = 5) -> dict[str, float]:
        from rfcache.models.hooks import attach_module_hooks, attach_unit_hooks, detach_unit_hooks
        from rfcache.runtime.conditioning import build_conditioning_store

        model, adapter, session = self.pipe.transformer, self.adapter, self.session
        store = build_conditioning_store(model, adapter, self.first, self.pipe.scheduler)
        assert store is not None
        row = self.steps // 2
        inputs = dict(self.first, timestep=self.pipe.scheduler.timesteps[row].expand(self.first["timestep"].shape[0]))
        out: dict[str, float] = {}
        out[BATCHED] = _timed(lambda: build_conditioning_store(model, adapter, self.first, self.pipe.scheduler), rounds)
        out["shared conditioning: per step"] = out[BATCHED] / self.steps
        attach_unit_hooks(model, adapter, lambda unit, o, a, k: self.outputs[unit.index], name="bench")
        try:
            out["skeleton alone (units free, conditioning per step)"] = _timed(lambda: model(**inputs), rounds)
            paths = adapter.conditioning_paths(model)
            attach_module_hooks(model, paths, lambda path, o, a, k: store.outputs[path][row], name="bench")
            out[SKELETON_SHARED] = _timed(lambda: model(**inputs), rounds)
            sample = model(**inputs).sample
        finally:
            detach_unit_hooks(model, name="bench")
        out["conditioning per step (the difference)"] = out["skeleton alone (units free, conditioning per step)"]
        out["conditioning per step (the difference)"] -= out[SKELETON_SHARED]
        session._step = self.branch.last_full + 2
        units = [(u, self.branch.units[u.index]) for u in session.units]
        out["predictor arithmetic (taylor m=2, all units)"] = _timed(
            lambda: [session._predict(u, s, s.differences[0][0]) for u, s in units], rounds
        )
        out["non-finite guard (once per step)"] = _timed(lambda: bool(torch.isfinite(sample).all()), rounds)
        return out


def _timed(fn: Callable[[], Any], rounds: int) -> float:
    fn()
    values = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def _params(method: str, pipe: Any, steps: int) -> dict[str, Any]:
    """``enable()`` arguments of ``method``: its SPEED_METHODS entry, a profile made for ``pipe``."""
    params = SPEED_METHODS[method]
    if "profile" not in params:
        return params
    import rfcache
    from _per_unit import staggered_profile  # benchmarks/ is the script's folder
    from rfcache.runtime.identity import model_identity
    from rfcache.schedules import Budget, MethodSpec, Profile, Provenance, SamplingSetup

    size = pipe.transformer.config.sample_size
    profile = Profile(
        name="rfe-m2-interval-4",
        model=model_identity(pipe.transformer, rfcache.get_adapter(pipe.transformer)),
        sampling=SamplingSetup("DDIMScheduler", steps, "cfg", (4, size, size)),
        method=MethodSpec("relational", 2, "interval"),
        schedule=_interval_pattern(steps),
        budget=Budget(1.0, 1.0),
        provenance=Provenance("benchmark: uniform interval, not calibrated", 0, 0, "now"),
    )
    if params["profile"] == "per-unit":
        profile = staggered_profile(pipe, profile, interval=4, warmup=2)
    return {"profile": profile}


def _interval_pattern(steps: int, interval: int = 4, warmup: int = 2) -> str:
    """The interval methods' full ("C") and cached ("P") steps, as their sessions decide them."""
    from rfcache.runtime.policies import interval_mask

    return "".join("C" if full else "P" for full in interval_mask(steps, interval, warmup))


def _median_step(entries: list[tuple[str, float]], kind: str) -> float:
    values = [t for k, t in entries if k == kind]
    return statistics.median(values) if values else float("nan")


if __name__ == "__main__":
    main()
