"""The reductions in one process: a sequence made of two equal shards, whose sum over the "group" is
twice the shard's, so the reduced quantities are known exactly (the spawned ranks are in
test_context_parallel.py)."""

import torch

from rfcache.models.tiny import tiny_transformer
from rfcache.runtime.parallel import context_group, is_context_parallel
from rfcache.runtime.policies import DynamicPolicy
from rfcache.runtime.predictors import (
    difference_gram,
    gram_pair_weights,
    per_sample_norm,
    relation_ratio,
    relational_forecast,
    stack_gram,
    stacked_relational_forecast,
)


def _twice(partial: torch.Tensor) -> torch.Tensor:
    return 2 * partial  # two ranks holding the same shard


def _whole(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x], dim=1)  # (B, S, D) -> (B, 2S, D): the sequence both shards make


def _tensors(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 4, generator=g) for _ in range(n)]


def test_norms_and_ratio_are_the_whole_sequences():
    x, y, a, b = _tensors(4)
    for p in (1, 2):
        torch.testing.assert_close(per_sample_norm(x, p, reduce=_twice), per_sample_norm(_whole(x), p))
    whole = relation_ratio(_whole(x), _whole(y), _whole(a), _whole(b))
    torch.testing.assert_close(relation_ratio(x, y, a, b, reduce=_twice), whole)
    # the ratio of two norms of one sequence does not change when the sequence is repeated
    torch.testing.assert_close(whole, relation_ratio(x, y, a, b))


def test_rfe_on_a_shard_is_the_shard_of_the_whole_sequences_rfe():
    d0, d1, d2, now, full = _tensors(5)
    diffs, ratio = [d0, d1, d2], torch.tensor([0.7, 1.3])
    whole = relational_forecast([_whole(d) for d in diffs], 2, ratio, _whole(now), _whole(full))
    shard = relational_forecast(diffs, 2, ratio, now, full, reduce=_twice)
    torch.testing.assert_close(shard, whole[:, :3])
    values = torch.tensor([1.0, 2.0, 2.0])  # k = 2: 2^i / i!
    gram = stack_gram(difference_gram(diffs, reduce=_twice))
    torch.testing.assert_close(gram, stack_gram(difference_gram([_whole(d) for d in diffs])))
    stacked = stacked_relational_forecast(
        diffs, values, gram_pair_weights(values), gram, ratio, now, full, reduce=_twice
    )
    torch.testing.assert_close(stacked, whole[:, :3])


def test_rcs_error_is_the_whole_sequences():
    reference, first = _tensors(2)
    decisions = []
    for x, ref, reduce in ((first, reference, _twice), (_whole(first), _whole(reference), None)):
        policy = DynamicPolicy(tau=0.0, order=1, warmup=0)
        policy._differences, policy._last_full = [ref], 0
        decisions.append(policy.decide(1, 1, x, reduce=reduce))
        decisions.append(policy._accumulated)
    assert decisions[0] == decisions[2]
    assert abs(decisions[1] - decisions[3]) < 1e-6


def test_a_model_without_parallelism_has_no_group():
    model = tiny_transformer("flux")
    assert context_group(model) is None and not is_context_parallel(model) and not is_context_parallel(object())
