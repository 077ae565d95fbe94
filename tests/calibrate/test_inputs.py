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


def test_test_prompts_come_from_their_own_pool_and_seeds_run_on():
    choice, tests = [f"a {i}" for i in range(6)], ["t 0", "a 0", "t 1", "t 2"]  # "a 0" is a calibration prompt
    sets = split_inputs(sizes=(4, 2, 3), prompts=choice, test_prompts=tests, seed=10)
    assert [i.prompt for i in sets.calibration + sets.selection] == choice
    assert [i.prompt for i in sets.test] == ["t 0", "t 1", "t 2"]
    assert [i.seed for i in _all(sets)] == list(range(10, 19))
    with pytest.raises(RfcacheError, match=r"6 calibration and 3 test prompts cannot keep .* --allow-overlap"):
        split_inputs(sizes=(4, 2, 4), prompts=choice, test_prompts=tests)
    short = split_inputs(sizes=(4, 2, 4), prompts=choice, test_prompts=tests, allow_overlap=True)
    assert [i.prompt for i in short.test] == ["t 0", "t 1", "t 2", "t 0"]


def test_toy_flux_calibrates_on_its_own_digit_prompts_and_tests_on_other_templates():
    import rfcache
    from rfcache.calibrate.api import input_sets
    from rfcache.models.toy_flux import CALIBRATION_TEMPLATES, digit_prompt

    template = {digit_prompt(d, t): t for t in range(10) for d in range(10)}
    sets = input_sets(rfcache.load_pipeline("toy-flux"), None, (8, 4, 8), seed=0)
    chosen = [template[i.prompt] for i in sets.calibration + sets.selection]
    tested = [template[i.prompt] for i in sets.test]
    assert set(chosen) <= set(CALIBRATION_TEMPLATES) and len(set(chosen)) > 1
    assert not set(tested) & set(chosen) and len(set(tested)) > 1
    assert [i.prompt for i in sets.calibration][:2] == ["a handwritten 0", "the digit one"]
    given = input_sets(rfcache.load_pipeline("toy-flux"), ["x 1", "x 2", "x 3"], (1, 1, 1), seed=0)
    assert [i.prompt for i in given.test] == ["x 3"]  # --prompts still wins
