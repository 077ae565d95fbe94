"""Fuzz the bundle loader: N mutated manifests of a real bundle, each must load or raise BundleError.

    python benchmarks/fuzz_bundles.py --cases 10000

Mutations (seeded): set a random field to a weird value (None, bools, huge ints, NaN/inf, unicode
text, lists, dicts), delete a field, add an unknown key, truncate the file, or write YAML/pickle
bytes; half of the cases recompute the manifest's content hash, as a deliberate editor would, so
the structural checks behind it are reached. Prints the outcome classes; any other exception is
reported with its case and counted as a failure (exit code 1).
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel

import rfcache
from rfcache.export import Bundle, BundleError, export
from rfcache.export.manifest import MANIFEST
from rfcache.export.manifest import content_hash as _content_hash
from rfcache.models.toy import DigitsDiTPipeline, toy_scheduler_config
from rfcache.runtime.identity import model_identity
from rfcache.schedules import Budget, MethodSpec, Profile, Provenance, SamplingSetup

WEIRD = [None, True, False, 0, -1, 2**70, -(2**70), float("nan"), float("inf"), 1e308, "", "ü💥\x00", [], [1, "a"], {}]


def tiny_bundle(root: Path) -> Path:
    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=1, out_channels=1, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10,
    ).eval()  # fmt: skip
    pipe = DigitsDiTPipeline(transformer=model, scheduler=DDIMScheduler(**toy_scheduler_config()))
    profile = Profile(
        name="fuzz",
        model=model_identity(model, rfcache.get_adapter(model)),
        sampling=SamplingSetup("DDIMScheduler", 7, "cfg", (1, 8, 8)),
        method=MethodSpec("relational", 2, "interval"),
        schedule="CCPPCPC",
        budget=Budget(0.5, 0.4),
        provenance=Provenance("fuzz", 0, 1, "now"),
    )
    return export(pipe, profile, root / "bundle")


def paths(data, prefix=()):
    if prefix:
        yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from paths(v, (*prefix, i))


def mutate(rng: random.Random, manifest: dict) -> str:
    kind = rng.choice(["set", "set", "delete", "extra", "truncate", "foreign"])
    if kind == "foreign":
        return rng.choice(["!!python/object/apply:os.system ['true']", "\x80\x04K\x01.", "[]", "1e999", "{" * 5000])
    data = copy.deepcopy(manifest)
    if kind != "truncate":
        path = rng.choice(list(paths(data)))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if kind == "set":
            parent[path[-1]] = rng.choice(WEIRD)
        elif kind == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent["extra_key"] = rng.choice(WEIRD)
    if rng.random() < 0.5:
        data["content_sha256"] = _content_hash(data)
    text = json.dumps(data, ensure_ascii=rng.random() < 0.5)
    return text[: rng.randrange(len(text))] if kind == "truncate" else text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    failures = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        original = tiny_bundle(Path(tmp))
        manifest = json.loads((original / MANIFEST).read_text())
        folder = Path(tmp) / "case"
        shutil.copytree(original, folder)
        for case in range(args.cases):
            text = mutate(rng, manifest)
            (folder / MANIFEST).write_text(text, encoding="utf-8", errors="surrogatepass")
            try:
                Bundle.load(folder)
                outcomes["loaded (a valid bundle)"] += 1
            except BundleError as exc:
                message = str(exc)
                if "\n" in message or not message:
                    failures.append((case, "multi-line message", message[:200]))
                key = re.sub(r"\[\d+\]", "[i]", message.split(": ", 1)[-1].split(" (")[0])[:60]
                outcomes[f"refused: {key}"] += 1
            except Exception as exc:  # what the fuzz run exists to find
                failures.append((case, type(exc).__name__, str(exc)[:200]))
    seconds = time.perf_counter() - started
    print(f"{args.cases} cases in {seconds:.1f} s (seed {args.seed}); outcome classes:")
    for name, count in outcomes.most_common():
        print(f"  {count:>6}  {name}")
    print(f"other exceptions: {len(failures)}")
    for case, kind, message in failures[:20]:
        print(f"  case {case}: {kind}: {message}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
