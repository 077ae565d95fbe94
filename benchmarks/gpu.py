"""GPU speed of a static schedule: eager, torch.compile, CUDA graphs and AOTInductor, in one process.

    python benchmarks/gpu.py                          # issue #12's measurement (needs a CUDA GPU)
    python benchmarks/gpu.py --json gpu.json --markdown gpu.md
    python benchmarks/gpu.py --small --device cpu --dtype float32 --steps 8 --repeats 1   # smoke run on CPU

The model is a random-weight DiT shaped like DiT-XL/2 (hidden 1152 = 16 heads x 72, 28 layers,
32x32x4 latent = 256 tokens, patch 2) in the embedded model's class-conditional pipeline: one
image with classifier-free guidance (transformer batch 2), 50 DDIM steps, bf16. Speed does not
depend on the weights, only on the pattern, so the schedule is an interval mask with NFC 14
(quality on random weights means nothing). ``--small`` swaps in a hidden-64, 2-layer DiT on a
16x16 latent so the whole script runs on a CPU in about a minute.

Rows (each a whole generation, median of ``--repeats`` rounds after one warm-up round, all rows
interleaved in every round, CUDA synchronised around each): full compute and RFC (relational
predictor, m=2) and TaylorSeer (Taylor predictor, m=2) on the same mask, each in eager PyTorch
(``rfcache.enable``), compiled (``compile=True``), compiled with CUDA graphs (``cuda_graphs=True``,
CUDA only) and as an AOTInductor bundle (``rfc-export --backend aoti``; with CUDA graphs on CUDA).
Columns: seconds, speed-up over full eager, the FLOP ideal (full FLOPs / the schedule's analytic
FLOPs, predictor cost included) and RFC's latency over TaylorSeer's at equal NFC (the paper
reports 1-8 %). Each variant runs on its own copy of the pipeline, so no variant recompiles
another's graphs.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel

import rfcache
from rfcache.devices import check_device
from rfcache.export import export, load_bundle
from rfcache.export.backends.aoti import AotiRunner
from rfcache.models.toy import DigitsDiTPipeline, toy_scheduler_config
from rfcache.runtime.identity import model_identity
from rfcache.schedules import Budget, MethodSpec, Profile, Provenance, SamplingSetup
from rfcache.schedules.masks import interval_for_nfc, interval_mask

XL = {"num_attention_heads": 16, "attention_head_dim": 72, "num_layers": 28, "sample_size": 32}
SMALL = {"num_attention_heads": 2, "attention_head_dim": 32, "num_layers": 2, "sample_size": 16}
LABELS = [207]


def build_pipeline(shape: dict[str, int], device: str, dtype: torch.dtype) -> DigitsDiTPipeline:
    """A random DiT of ``shape`` (4-channel latent, patch 2, 1000 classes) in the class-conditional pipeline."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(in_channels=4, out_channels=4, patch_size=2, **shape).eval()
    pipe = DigitsDiTPipeline(transformer=transformer, scheduler=DDIMScheduler(**toy_scheduler_config()))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def make_profile(pipe: DigitsDiTPipeline, mask: str, predictor: str) -> Profile:
    size = pipe.transformer.config.sample_size
    return Profile(
        name=f"gpu-bench-{predictor}",
        model=model_identity(pipe.transformer, rfcache.get_adapter(pipe)),
        sampling=SamplingSetup("DDIMScheduler", len(mask), "cfg", (4, size, size)),
        method=MethodSpec(predictor, 2, "interval"),
        schedule=mask,
        budget=Budget(1.0, 1.0),
        provenance=Provenance("benchmark: interval mask, not calibrated", 0, 0, "now"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--nfc", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="a tiny DiT instead of DiT-XL/2's shape (smoke run)")
    parser.add_argument("--variants", default="eager,compile,cudagraph,aoti", help="comma-separated subset")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown")
    args = parser.parse_args()
    device = str(check_device(args.device))
    dtype = getattr(torch, args.dtype)
    cuda = torch.device(device).type == "cuda"
    variants = set(args.variants.split(","))
    if not cuda:
        variants.discard("cudagraph")
    for name in ("recompile_limit", "cache_size_limit"):  # every pipeline copy compiles its own variants
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)

    base = build_pipeline(SMALL if args.small else XL, device, dtype)
    interval, warmup, nfc = interval_for_nfc(args.steps, args.nfc)
    mask = "".join("C" if full else "P" for full in interval_mask(args.steps, interval, warmup))
    profiles = {"rfc": make_profile(base, mask, "relational"), "taylorseer": make_profile(base, mask, "taylor")}
    print(f"model {'small' if args.small else 'DiT-XL/2 shape'}, {args.dtype} on {device}, {args.steps} steps")
    print(f"mask {mask} (NFC {nfc}, interval {interval}, warm-up {warmup})")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def pipeline_call(pipe: DigitsDiTPipeline) -> Callable[[], object]:
        return lambda: pipe(class_labels=LABELS, num_inference_steps=args.steps, output_type="pt")

    runs: dict[tuple[str, str], Callable[[], object]] = {}
    ideal: dict[str, float] = {"full": 1.0}
    for method in ("full", "rfc", "taylorseer"):
        for variant in ("eager", "compile", "cudagraph"):
            if variant not in variants:
                continue
            pipe = copy.deepcopy(base)
            options = {"compile": variant != "eager", "cuda_graphs": variant == "cudagraph"}
            if method == "full":
                rfcache.enable(pipe, method="none", **options)
            else:
                rfcache.enable(pipe, profiles[method], **options)
            runs[(method, variant)] = pipeline_call(pipe)
            if variant == "eager" and method != "full":
                runs[(method, variant)]()
                s = rfcache.summary(pipe)
                ideal[method] = s.full_flops / s.total_flops
    folder = Path(tempfile.mkdtemp(prefix="rfcache-gpu-bench-"))
    if "aoti" in variants:
        for method in ("rfc", "taylorseer"):
            started = time.perf_counter()
            bundle = load_bundle(export(base, profiles[method], folder / method, backend="aoti"))
            print(f"aoti export of {method}: {time.perf_counter() - started:.1f} s")
            for graphs in (False, True) if cuda else (False,):
                runner = AotiRunner(bundle, device=device, cuda_graphs=graphs)
                runs[(method, "aoti+cudagraph" if graphs else "aoti")] = lambda r=runner: r.generate(LABELS)

    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for round_ in range(args.repeats + 1):  # round 0 is the warm-up (compilation, capture)
        for key, run in runs.items():
            sync()
            started = time.perf_counter()
            run()
            sync()
            if round_:
                times[key].append(time.perf_counter() - started)
    full_eager = statistics.median(times[("full", "eager")])
    rows = []
    for (method, variant), values in times.items():
        seconds = statistics.median(values)
        rows.append(
            {
                "method": method,
                "variant": variant,
                "seconds": round(seconds, 4),
                "speedup_vs_full_eager": round(full_eager / seconds, 3),
                "flop_ideal_speedup": round(ideal[method], 3),
                "rfc_over_taylorseer": None,
            }
        )
    for row in rows:
        if row["method"] == "rfc":
            peer = times.get(("taylorseer", row["variant"]))
            if peer:
                row["rfc_over_taylorseer"] = round(row["seconds"] / statistics.median(peer) - 1, 4)
    header = "| method | variant | seconds | speed-up vs full eager | FLOP ideal | RFC over TaylorSeer |"
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        over = f"{100 * r['rfc_over_taylorseer']:+.1f} %" if r["rfc_over_taylorseer"] is not None else ""
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['seconds']:.3f} | {r['speedup_vs_full_eager']:.2f}x "
            f"| {r['flop_ideal_speedup']:.2f}x | {over} |"
        )
    table = "\n".join(lines)
    print(table)
    given = {k: v for k, v in vars(args).items() if v not in (None, False)}
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in given.items()]
    command = "python benchmarks/gpu.py " + " ".join(flags)
    meta = {"command": command, "device": device, "dtype": args.dtype, "mask": mask, "nfc": nfc}
    if cuda:
        meta["gpu"] = torch.cuda.get_device_name()
    meta["torch"] = torch.__version__
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(f"`{command}` ({meta.get('gpu', device)}, torch {torch.__version__})\n\n{table}\n")


if __name__ == "__main__":
    main()
