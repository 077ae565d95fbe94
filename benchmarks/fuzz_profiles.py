"""Fuzz the profile loader with mutated valid profile files and count how each case ends.

Every case must end in a valid ``Profile`` (which then round-trips) or in a one-line
``ProfileError``; anything else (another exception, a multi-line message, a file written by a YAML
tag that runs code) is a violation and makes the script exit with status 1. The mutator here is
independent of the hypothesis tests in ``tests/schedules/test_profile_fuzz.py``.

    python benchmarks/fuzz_profiles.py --cases 10000 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from rfcache.schedules import Budget, MethodSpec, ModelIdentity, Profile, ProfileError, Provenance, SamplingSetup

VALID = Profile(
    name="toy-fuzz",
    model=ModelIdentity("dit", "DiTTransformer2DModel", "abc123", 4),
    sampling=SamplingSetup("DDIMScheduler", 6, "cfg", (1, 16, 16)),
    method=MethodSpec("relational", 2, "warped", {"nfc": 3.0, "warmup": 2.0, "alpha": 0.5}),
    schedule="CCPPCP",
    budget=Budget(0.4, 0.371),
    provenance=Provenance("deadbeef", 0, 10, "2026-11-24T00:00:00Z", {"rfcache": "0.1"}),
    ratios=(0.1, 0.2, 1e-7, 3.0),
    quality={"heldout_rel_l2": 0.0123},
)
TEXT = VALID.to_yaml()
DATA = VALID.to_dict()

UNICODE = "aé漢字🙂\u202e\u2028\u0085\x0b\t\n\r\x00\x7f\ufeff\u200b"
YAML_SYNTAX = ":{}[],&*!|>'\"#%@`-? \n"
NUMBERS = [
    "9" * 400,
    "-" + "9" * 400,
    "1e999",
    "-1e999",
    ".nan",
    ".inf",
    "-.inf",
    "0x1F",
    "0o17",
    "1_000",
    "-0.0",
    "1e-400",
    "'1e5'",
    "2**70",
    "1.7976931348623157e308",
    "true",
    "null",
    "~",
]


def _tags(sentinel: Path) -> list[str]:
    """Tag payloads: the first five would run code under an unsafe loader (they create ``sentinel``)."""
    return [
        f"!!python/object/apply:os.system ['touch {sentinel}']",
        f"!!python/object/apply:builtins.exec [\"open({str(sentinel)!r}, 'w')\"]",
        f"!!python/object/new:os.system ['touch {sentinel}']",
        f"!!python/object/apply:subprocess.check_call [['touch', '{sentinel}']]",
        "!!python/name:os.system",
        "!!python/module:os",
        "!!python/object:collections.OrderedDict {}",
        "!!binary aGVsbG8=",
        "!!binary '***'",
        "!!timestamp 2026-11-24",
        "!!timestamp not-a-date",
        "!!set {a, b}",
        "!!omap [a: 1]",
        "!!float abc",
        "!!int 0x",
        "!!str [1, 2]",
        "!custom 1",
        "&anchor [*anchor]",
        "[" * 1500 + "]" * 1500,
    ]


def _weird_value(rng: random.Random) -> object:
    choices = [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.randint(-(2**70), 2**70),
        lambda: 10 ** rng.randint(300, 500),
        lambda: rng.choice([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 5e-324]),
        lambda: rng.uniform(-10, 10),
        lambda: "".join(rng.choice(UNICODE) for _ in range(rng.randint(0, 12))),
        lambda: [rng.uniform(0, 1) for _ in range(rng.randint(0, 12))],
        lambda: "".join(rng.choice("CPX") for _ in range(rng.randint(0, 12))),
        lambda: {_random_key(rng): rng.randint(0, 9) for _ in range(rng.randint(0, 3))},
        lambda: [[[rng.randint(0, 3)]]],
    ]
    return rng.choice(choices)()


def _random_key(rng: random.Random) -> str:
    return rng.choice(["extra", "name", "ratios", ""]) + "".join(rng.choice(UNICODE) for _ in range(rng.randint(0, 4)))


def _paths(data: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(DATA)


def mutate_structure(rng: random.Random, sentinel: Path) -> str:
    data = copy.deepcopy(DATA)
    for _ in range(rng.randint(1, 4)):
        path = rng.choice(PATHS)
        try:
            parent = data
            for key in path[:-1]:
                parent = parent[key]
            action = rng.choice(["set", "delete", "extra"])
            if action == "set":
                parent[path[-1]] = _weird_value(rng)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[_random_key(rng)] = _weird_value(rng)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced or removed the parent
    return yaml.safe_dump(data, allow_unicode=rng.random() < 0.5)


def mutate_truncate(rng: random.Random, sentinel: Path) -> str:
    cut = rng.randint(0, len(TEXT))
    junk = "".join(rng.choice(UNICODE + YAML_SYNTAX) for _ in range(rng.randint(0, 10)))
    return TEXT[:cut] + (junk if rng.random() < 0.5 else "")


def mutate_chars(rng: random.Random, sentinel: Path) -> str:
    text = TEXT
    for _ in range(rng.randint(1, 5)):
        i = rng.randint(0, len(text))
        c = rng.choice(UNICODE + YAML_SYNTAX + "0123456789.eE-+CP")
        action = rng.choice(["insert", "delete", "replace"])
        text = text[:i] + ("" if action == "delete" else c) + text[i + (action != "insert") :]
    return text


def mutate_lengths(rng: random.Random, sentinel: Path) -> str:
    data = copy.deepcopy(DATA)
    field = rng.choice(["schedule", "ratios", "resolution", "num_steps", "num_units"])
    n = rng.choice([0, 1, 3, 5, 7, 50, 10_000])
    if field == "schedule":
        data["schedule"] = "".join(rng.choice("CP") for _ in range(n))
    elif field == "ratios":
        data["ratios"] = [rng.uniform(0, 2) for _ in range(n)]
    elif field == "resolution":
        data["sampling"]["resolution"] = [16] * n
    elif field == "num_steps":
        data["sampling"]["num_steps"] = n
    else:
        data["model"]["num_units"] = n
    return yaml.safe_dump(data)


def mutate_numbers(rng: random.Random, sentinel: Path) -> str:
    spans = [m.span() for m in re.finditer(r"(?<![\w.'])-?\d[\d.e+-]*", TEXT)]
    text = TEXT
    for start, end in sorted(rng.sample(spans, k=rng.randint(1, 3)), reverse=True):
        text = text[:start] + rng.choice(NUMBERS) + text[end:]
    return text


def mutate_tags(rng: random.Random, sentinel: Path) -> str:
    lines = TEXT.splitlines()
    i = rng.randrange(len(lines))
    key, sep, _ = lines[i].partition(":")
    if not sep:
        return TEXT
    lines[i] = f"{key}: {rng.choice(_tags(sentinel))}"
    return "\n".join(lines) + "\n"


def mutate_aliases(rng: random.Random, sentinel: Path) -> str:
    """A field whose value is a chain of anchors, each level ``width`` aliases of the previous one."""
    width, depth = rng.randint(2, 9), rng.randint(2, 9)
    levels = [f"&l0 [{', '.join(['x'] * width)}]"]
    levels += [f"&l{d} [{', '.join([f'*l{d - 1}'] * width)}]" for d in range(1, depth)]
    data = copy.deepcopy(DATA)
    field = rng.choice(["name", "ratios", "quality", "schedule", "diagnostics"])
    data.pop(field, None)
    value = "[" + ", ".join(levels[::-1] if rng.random() < 0.5 else levels) + "]"
    if field in ("quality", "diagnostics"):
        value = "{" + ", ".join(f"k{i}: {v}" for i, v in enumerate(levels)) + "}"
    return yaml.safe_dump(data) + f"{field}: {value}\n"


MUTATORS = {
    "structure": mutate_structure,
    "truncate": mutate_truncate,
    "chars": mutate_chars,
    "lengths": mutate_lengths,
    "numbers": mutate_numbers,
    "tags": mutate_tags,
    "aliases": mutate_aliases,
}

_CLASSES = [
    ("not valid YAML", "not valid YAML"),
    ("unknown key", "unknown key"),
    ("missing key", "missing key"),
    ("schema_version must be", "wrong schema_version"),
    ("at the top level", "top level not a mapping"),
    ("must be finite", "non-finite number"),
    ("must be a mapping", "wrong type"),
    ("must be a list", "wrong type"),
    ("must be a number", "wrong type"),
    ("must be an integer", "wrong type"),
    ("must be a string", "wrong type"),
    ("schedule has", "wrong length"),
    ("ratios has", "wrong length"),
    ("string of C and P", "schedule not C/P"),
    ("must be in (0, 1]", "out of range"),
    ("must be >=", "out of range"),
    ("must be 0, 1 or 2", "out of range"),
    ("must be reuse", "out of range"),
    ("must be module or block", "out of range"),
]


def classify(text: str) -> str:
    """How loading ``text`` ends: ``valid``, ``ProfileError: <kind>``, or ``VIOLATION: <what>``."""
    try:
        profile = Profile.from_yaml(text, source="fuzz.yaml")
    except ProfileError as exc:
        message = str(exc)
        if len(message.splitlines()) != 1 or not message.startswith("fuzz.yaml: "):
            return "VIOLATION: ProfileError message not one line naming the file"
        kind = next((name for needle, name in _CLASSES if needle in message), None)
        return f"ProfileError: {kind or 'invalid value'}"
    except BaseException as exc:  # the census must see every escape
        return f"VIOLATION: {type(exc).__name__}"
    if Profile.from_yaml(profile.to_yaml()) != profile:
        return "VIOLATION: valid profile does not round-trip"
    return "valid Profile"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    per_mutator: dict[str, Counter[str]] = {name: Counter() for name in MUTATORS}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sentinel = Path(tmp) / "code-was-executed"
        for _ in range(args.cases):
            name = rng.choice(list(MUTATORS))
            outcome = classify(MUTATORS[name](rng, sentinel))
            if sentinel.exists():
                outcome = "VIOLATION: a YAML tag ran code"
                sentinel.unlink()
            outcomes[outcome] += 1
            per_mutator[name][outcome.split(":")[0]] += 1
    seconds = time.perf_counter() - start

    print(f"{args.cases} cases, seed {args.seed}, {seconds:.1f} s")
    print(f"{'outcome':<48} {'cases':>7} {'share':>7}")
    for outcome, n in outcomes.most_common():
        print(f"{outcome:<48} {n:>7} {n / args.cases:>7.1%}")
    print(f"\n{'mutator':<12} {'cases':>7} {'valid':>7} {'error':>7} {'violations':>10}")
    for name, c in per_mutator.items():
        total = sum(c.values())
        print(f"{name:<12} {total:>7} {c['valid Profile']:>7} {c['ProfileError']:>7} {c['VIOLATION']:>10}")
    violations = sum(n for o, n in outcomes.items() if o.startswith("VIOLATION"))
    print(f"\nviolations: {violations}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
