"""Property-based: any mutation of a valid profile file loads or fails with a one-line ProfileError.

``benchmarks/fuzz_profiles.py`` runs 10,000 cases of a second, independent mutator and counts the outcomes.
"""

import copy
import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rfcache.schedules import Profile, ProfileError
from tests.schedules.test_profile import make_profile

VALID = make_profile().to_dict()

weird_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=10**300, max_value=10**400),  # past the float range
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),  # any unicode, line breaks and control characters included
    st.lists(st.integers(), max_size=3),
    st.lists(st.floats(allow_nan=True), max_size=12),  # wrong lengths for ratios, resolution
    st.text(alphabet="CPX", max_size=12),  # schedules of the wrong length or alphabet
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, (*prefix, i))


PATHS = [p for p in _paths(VALID) if p]


def _set(data, path, value):
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _delete(data, path):
    target = data
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]


def _outcome(text: str) -> None:
    try:
        profile = Profile.from_yaml(text, source="fuzz.yaml")
    except ProfileError as exc:
        message = str(exc)
        assert message.startswith("fuzz.yaml: ") and len(message.splitlines()) == 1 and len(message) < 400
    else:
        assert isinstance(profile, Profile) and Profile.from_yaml(profile.to_yaml()) == profile


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(PATHS),
            st.sampled_from(["set", "delete", "extra"]),
            weird_values,
            st.one_of(st.just("extra_key"), st.text(min_size=1, max_size=8)),
        ),
        max_size=4,
    )
)
def test_mutated_profiles_load_or_fail_cleanly(edits):
    _outcome(yaml.safe_dump(apply_edits(VALID, edits), allow_unicode=True))


def apply_edits(original, edits):
    """A copy of ``original`` with each ``(path, action, value, key)`` edit applied where it still fits."""
    data = copy.deepcopy(original)
    for path, action, value, key in edits:
        try:
            if action == "set":
                _set(data, path, value)
            elif action == "delete":
                _delete(data, path)
            else:
                _set(data, (*path[:-1], key), value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced the parent
    return data


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(make_profile().to_yaml())), junk=st.text(max_size=30))
def test_truncated_or_appended_text_fails_cleanly(cut, junk):
    text = make_profile().to_yaml()
    _outcome(text[:cut])
    _outcome(text[:cut] + junk)


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(max_size=8),
    where=st.integers(min_value=0, max_value=len(make_profile().to_yaml())),
    action=st.sampled_from(["insert", "replace", "delete"]),
)
def test_edited_characters_fail_cleanly(text, where, action):
    valid = make_profile().to_yaml()
    end = where + (len(text) if action == "replace" else 1 if action == "delete" else 0)
    _outcome(valid[:where] + ("" if action == "delete" else text) + valid[end:])


CODE_TAGS = [
    "!!python/object/apply:os.system",
    "!!python/object/apply:builtins.exec",
    "!!python/object/new:os.system",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:collections.OrderedDict",
]


@settings(max_examples=100, deadline=None)
@given(
    tag=st.sampled_from([*CODE_TAGS, "!!binary", "!!set", "!!timestamp", "!!omap", "!custom"]),
    at=st.sampled_from(PATHS),
)
def test_yaml_tags_never_construct_objects(tag, at, tmp_path_factory):
    sentinel = tmp_path_factory.mktemp("tags") / "executed"
    command = f"open({str(sentinel)!r}, 'w')" if "exec" in tag else f"touch {sentinel}"
    lines = make_profile().to_yaml().splitlines()
    key = str(at[-1])
    index = next((i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:")), 1)
    indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
    lines[index] = f"{indent}{key}: {tag} [{command!r}]"
    _outcome("\n".join(lines) + "\n")
    _outcome(f"schema_version: 1\nname: {tag} [{command!r}]\n")
    assert not os.path.exists(sentinel)  # nothing was run


# nine levels of eight aliases each: 8**9 leaves if anything expanded the references
BILLION_LAUGHS = "a: &a [x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 8)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


# nine levels of eight aliases each: 8**9 leaves if anything expanded the references
BILLION_LAUGHS = "a: &a [x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 8)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 5000 + "]" * 5000,  # nesting past the YAML composer's recursion
        "name: " + "[" * 300 + "]" * 300,
        make_profile().to_yaml().replace("target: 0.4", "target: " + "9" * 400),  # an int past float range
        make_profile().to_yaml().replace("ratios: [0.1,", "ratios: [1e999,"),
        make_profile().to_yaml() + '"bad\\nkey\\u2028": 1\n',  # line breaks in a key name
        make_profile().to_yaml().replace("created: '2026-11-24T00:00:00Z'", "created: 2026-11-24T00:00:00Z"),
        "&a [*a]",  # self-reference
        "schema_version: !!float 1e-07'\n",  # an explicit tag whose value its safe constructor rejects
        "schema_version: !!int 0x\n",
        BILLION_LAUGHS,
        "schema_version: 1\n" + "x" * 100_000,
    ],
)
def test_hostile_documents_fail_cleanly(text):
    _outcome(text)


def _per_unit_valid():
    from tests.schedules.test_profile_per_unit import make_per_unit

    return make_per_unit().to_dict()


PER_UNIT = _per_unit_valid()
PER_UNIT_PATHS = [p for p in _paths(PER_UNIT) if p]
row_values = st.one_of(
    weird_values,
    st.text(alphabet="CP", min_size=5, max_size=7),  # rows of about the right length: warm-up, first step, sum
    st.sampled_from(["b.0.attn1", "b.0.ff", "b.1.attn1", "b.1.ff", "late"]),  # names that repeat or vanish
    st.lists(st.sampled_from(["b.0.ff", "b.1.ff", "b.2.ff", ""]), max_size=3),  # groups
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(PER_UNIT_PATHS),
            st.sampled_from(["set", "delete", "extra"]),
            row_values,
            st.one_of(st.sampled_from(["b.0.ff", "late", "b.9.ff", "extra_key"]), st.text(min_size=1, max_size=8)),
        ),
        max_size=4,
    )
)
def test_mutated_per_unit_profiles_load_or_fail_cleanly(edits):
    _outcome(yaml.safe_dump(apply_edits(PER_UNIT, edits), allow_unicode=True))
