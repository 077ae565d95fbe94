"""Does ``toy-flux`` draw the digit its prompt names? The digits classifier's verdict on fresh samples.

    python -m rfcache.evaluate.prompt_following --samples 200 --seed 10000

Sample ``i`` uses the prompt of template ``(i // 10) % T`` for digit ``i % 10`` (every template and
digit alike) and seed ``seed + i``, at the pipeline's default call (guidance, size) unless
``--guidance`` says otherwise. The samples go to the real-digits classifier of
:mod:`rfcache.evaluate.digits`; the share whose predicted digit is the prompt's is the accuracy.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["PromptFollowing", "measure_prompt_following"]


@dataclass
class PromptFollowing:
    """Accuracy over all samples, per digit and per template, with the setup that produced it."""

    accuracy: float
    samples: int
    seed: int
    steps: int
    guidance: float | None
    per_digit: list[float] = field(default_factory=list)
    per_template: list[float] = field(default_factory=list)
    seconds: float = 0.0


def measure_prompt_following(
    pipe: Any,
    *,
    samples: int = 200,
    seed: int = 10_000,
    steps: int = 50,
    guidance: float | None = None,
    batch: int = 20,
) -> PromptFollowing:
    """Generate ``samples`` digits from their prompts on seeds ``seed..seed+samples-1`` and classify them."""
    import time

    from rfcache.evaluate.digits import digits_classifier, to_digits_features
    from rfcache.models.toy_flux import PROMPT_TEMPLATES, digit_prompt

    templates = len(PROMPT_TEMPLATES)
    digits = [i % 10 for i in range(samples)]
    prompts = [digit_prompt(i % 10, (i // 10) % templates) for i in range(samples)]
    extra = {} if guidance is None else {"guidance_scale": guidance}
    started, images = time.perf_counter(), []
    for lo in range(0, samples, batch):
        hi = min(lo + batch, samples)
        generators = [torch.Generator().manual_seed(seed + i) for i in range(lo, hi)]
        out = pipe(prompts[lo:hi], num_inference_steps=steps, generator=generators, output_type="np", **extra)
        images.append(np.asarray(out.images, dtype=np.float32))  # (b, H, W, 1)
    predicted = digits_classifier().predict(to_digits_features(np.concatenate(images)))
    hits = predicted == np.asarray(digits)
    template_of = np.asarray([(i // 10) % templates for i in range(samples)])
    return PromptFollowing(
        accuracy=float(hits.mean()),
        samples=samples,
        seed=seed,
        steps=steps,
        guidance=guidance,
        per_digit=[round(float(hits[np.asarray(digits) == d].mean()), 3) for d in range(10)],
        per_template=[round(float(hits[template_of == t].mean()), 3) for t in sorted(set(template_of.tolist()))],
        seconds=round(time.perf_counter() - started, 1),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy-flux", help="'toy-flux' or a folder of a retrained one")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=None, help="default: the pipeline's (3.0)")
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    if args.model == "toy-flux":
        from rfcache.pipelines import load_pipeline

        pipe = load_pipeline("toy-flux")
    else:
        from rfcache.models.toy_flux import load_toy_flux_pipeline

        pipe = load_toy_flux_pipeline(args.model)
    result = measure_prompt_following(
        pipe, samples=args.samples, seed=args.seed, steps=args.steps, guidance=args.guidance, batch=args.batch
    )
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
