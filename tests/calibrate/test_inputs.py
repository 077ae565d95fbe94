import pytest

from rfcache.calibrate.inputs import split_inputs
from rfcache.errors import RfcacheError


def _all(sets):
    return [item for items in sets.as_dict().values() for item in items]


def test_labels_repeat_but_seeds_keep_the_sets_apart():
    sets = split_inputs(sizes=(8, 4, 8), labels=range(10), seed=0)
    assert [len(sets.calibration), len(sets.selection), len(sets.test)] == [8, 4, 8]
    seeds = [item.seed for item in _all(sets)]
    assert len(set(seeds)) == len(seeds) == 20
    assert [i.label for i in sets.calibration] == list(range(8))
    assert [i.label for i in sets.selection] == [8, 9, 0, 1]
    assert all(i.prompt is None for i in _all(sets))


def test_prompts_never_repeat_across_sets():
    pool = [f"prompt {i}" for i in range(12)]
    sets = split_inputs(sizes=(4, 2, 3), prompts=pool, seed=100)
    prompts = [i.prompt for i in _all(sets)]
    assert len(set(prompts)) == len(prompts) == 9
    assert [i.seed for i in sets.test] == [106, 107, 108]


def test_a_short_prompt_pool_is_refused_in_one_line_unless_overlap_is_allowed():
    pool = ["a cat", "a dog", "a cat"]  # two distinct prompts
    with pytest.raises(RfcacheError, match=r"2 distinct prompts cannot keep .* --allow-overlap") as info:
        split_inputs(sizes=(2, 1, 1), prompts=pool)
    assert "\n" not in str(info.value)
    sets = split_inputs(sizes=(2, 1, 1), prompts=pool, allow_overlap=True)
    assert [i.prompt for i in _all(sets)] == ["a cat", "a dog", "a cat", "a dog"]
    assert len({i.seed for i in _all(sets)}) == 4  # seeds still never repeat


def test_every_set_needs_an_input():
    with pytest.raises(RfcacheError, match="need >= 1 input each"):
        split_inputs(sizes=(4, 0, 4), labels=range(10))
