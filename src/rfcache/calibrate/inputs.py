"""Three disjoint input sets for calibration: *calibration*, *selection* and *test*.

- **calibration**: recording, the ratio and error-model fits, the search, the real confirmation runs;
- **selection**: choosing among the confirmed candidates;
- **test**: reported only (the closing table's ``test_rel_l2``), never used for any choice.

Every item has its own seed, and no seed repeats across (or within) the sets. Prompts do not repeat
either: a prompt pool too short to keep the sets apart is refused unless ``allow_overlap`` is
given. Class labels necessarily repeat (the embedded model has 10 digits): there the seeds keep
the sets apart. A pipeline may keep its test inputs' prompts apart from the rest
(``test_prompts``: e.g. other prompt templates than the calibration and selection prompts). Pure: no
torch, no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rfcache.errors import RfcacheError
from rfcache.schedules import InputItem

__all__ = ["SETS", "InputSets", "split_inputs"]

SETS = ("calibration", "selection", "test")


@dataclass(frozen=True)
class InputSets:
    """The three sets, items in order; ``as_dict`` is what ``provenance.inputs`` records."""

    calibration: tuple[InputItem, ...]
    selection: tuple[InputItem, ...]
    test: tuple[InputItem, ...]

    def as_dict(self) -> dict[str, tuple[InputItem, ...]]:
        return {name: getattr(self, name) for name in SETS}


def split_inputs(
    *,
    sizes: tuple[int, int, int],
    seed: int = 0,
    prompts: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    test_prompts: Sequence[str] | None = None,
    allow_overlap: bool = False,
) -> InputSets:
    """Split a pool of ``prompts`` (or class ``labels``) into calibration, selection and test sets.

    Items are taken from the pool in order, set after set; item ``i`` overall gets seed
    ``seed + i``, so seeds never repeat. Labels cycle through the pool; prompts must be
    ``sum(sizes)`` distinct ones unless ``allow_overlap`` (then they cycle too). With
    ``test_prompts``, calibration and selection take ``prompts`` and the test set takes
    ``test_prompts`` (those not also in ``prompts``); seeds still run on across the three sets.

    Example:
        >>> sets = split_inputs(sizes=(2, 1, 1), labels=range(10))
        >>> [(i.seed, i.label) for i in sets.test]
        [(3, 3)]
    """
    if (prompts is None) == (labels is None):
        raise ValueError("give either prompts or labels")
    if any(n < 1 for n in sizes):
        raise RfcacheError(f"calibration, selection and test sets need >= 1 input each, got {sizes}")
    total = sum(sizes)
    if labels is not None:
        pool = [int(v) for v in labels]
        if not pool:
            raise RfcacheError("no class labels to calibrate on")
        items = [InputItem(seed=seed + i, label=pool[i % len(pool)]) for i in range(total)]
    elif test_prompts is not None:
        pool = _distinct(prompts)
        tests = [p for p in _distinct(test_prompts) if p not in pool]
        if not tests:
            raise RfcacheError("no test prompts apart from the calibration prompts")
        chosen = sizes[0] + sizes[1]
        if (len(pool) < chosen or len(tests) < sizes[2]) and not allow_overlap:
            raise RfcacheError(
                f"{len(pool)} calibration and {len(tests)} test prompts cannot keep calibration ({sizes[0]}), "
                f"selection ({sizes[1]}) and test ({sizes[2]}) apart: fewer samples, or --allow-overlap"
            )
        drawn = [pool[i % len(pool)] for i in range(chosen)] + [tests[i % len(tests)] for i in range(sizes[2])]
        items = [InputItem(seed=seed + i, prompt=p) for i, p in enumerate(drawn)]
    else:
        pool = _distinct(prompts)
        if len(pool) < total and not allow_overlap:
            raise RfcacheError(
                f"{len(pool)} distinct prompts cannot keep calibration ({sizes[0]}), selection ({sizes[1]}) and "
                f"test ({sizes[2]}) apart: give {total} or more, fewer samples, or --allow-overlap"
            )
        items = [InputItem(seed=seed + i, prompt=pool[i % len(pool)]) for i in range(total)]
    a, b = sizes[0], sizes[0] + sizes[1]
    return InputSets(tuple(items[:a]), tuple(items[a:b]), tuple(items[b:]))


def _distinct(prompts: Sequence[str] | None) -> list[str]:
    pool = list(dict.fromkeys(str(p) for p in prompts or ()))  # distinct, in order
    if not pool:
        raise RfcacheError("no prompts to calibrate on")
    return pool
