"""Property-based: any mutation of a valid profile file loads or fails with a one-line ProfileError."""

import copy

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
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
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
        Profile.from_yaml(text, source="fuzz.yaml")
    except ProfileError as exc:
        message = str(exc)
        assert message.startswith("fuzz.yaml: ") and "\n" not in message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(PATHS), st.sampled_from(["set", "delete", "extra"]), weird_values), max_size=4
    )
)
def test_mutated_profiles_load_or_fail_cleanly(edits):
    data = copy.deepcopy(VALID)
    for path, action, value in edits:
        try:
            if action == "set":
                _set(data, path, value)
            elif action == "delete":
                _delete(data, path)
            else:
                _set(data, (*path[:-1], "extra_key"), value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced the parent
    _outcome(yaml.safe_dump(data, allow_unicode=True))


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(make_profile().to_yaml())), junk=st.text(max_size=30))
def test_truncated_or_appended_text_fails_cleanly(cut, junk):
    text = make_profile().to_yaml()
    _outcome(text[:cut])
    _outcome(text[:cut] + junk)


@settings(max_examples=50, deadline=None)
@given(tag=st.sampled_from(["!!python/object/apply:os.system", "!!python/name:os.system", "!!binary", "!!set"]))
def test_yaml_tags_never_construct_objects(tag):
    _outcome(f"schema_version: 1\nname: {tag} ['x']\n")
