"""Two generations on two pipelines in two threads, caching enabled: no state is shared.

The threads run in lockstep (a barrier before every transformer call), so both caches are live
and touched alternately during the same steps; the check is run once on a session deliberately
broken to share its cache, to show that it would catch shared state.
"""

import threading

import torch

import rfcache
from rfcache.runtime.session import CacheSession
from tests.conftest import generate, make_tiny_digits_pipeline

STEPS = 12
# different methods, seeds and batch sizes, so that any mixing of state shows in the outputs
SETUPS = [
    ({"method": "rfc", "tau": 0.2}, (2,)),
    ({"method": "taylorseer", "interval": 3, "order": 2}, (4, 5, 6)),
]


def _pipelines():
    pipes = [make_tiny_digits_pipeline(seed=0), make_tiny_digits_pipeline(seed=1)]
    for pipe, (cache, _) in zip(pipes, SETUPS, strict=True):
        rfcache.enable(pipe, **cache)
    return pipes


def _alone(pipes):
    return [
        (generate(pipe, steps=STEPS, labels=labels), rfcache.summary(pipe))
        for pipe, (_, labels) in zip(pipes, SETUPS, strict=True)
    ]


def _in_lockstep(pipes, rounds=2):
    """Each thread generates ``rounds`` times; every transformer call waits for the other thread's."""
    barrier = threading.Barrier(2, timeout=60)

    def wait_for_the_other(module, args):
        barrier.wait()  # returns None: the call's arguments stay as they are

    handles = [p.transformer.register_forward_pre_hook(wait_for_the_other) for p in pipes]
    results = {0: [], 1: []}
    errors = []

    def work(i):
        try:
            for _ in range(rounds):
                out = generate(pipes[i], steps=STEPS, labels=SETUPS[i][1])
                results[i].append((out, rfcache.summary(pipes[i])))
        except Exception as exc:  # reported below, with the thread it came from
            errors.append((i, exc))
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in handles:
        h.remove()
    return results, errors


def _same(results, errors, expected, rounds=2):
    if errors:
        return False
    return all(
        len(results[i]) == rounds
        and all(torch.equal(out, expected[i][0]) and summary == expected[i][1] for out, summary in results[i])
        for i in (0, 1)
    )


def test_two_pipelines_in_two_threads_keep_their_own_state():
    pipes = _pipelines()
    expected = _alone(pipes)
    assert "P" in expected[0][1].pattern and "P" in expected[1][1].pattern  # both really cache
    results, errors = _in_lockstep(pipes)
    assert not errors, errors
    assert _same(results, errors, expected)


def test_the_check_catches_sessions_that_share_their_cache(monkeypatch):
    pipes = _pipelines()
    expected = _alone(pipes)
    shared: list = []
    reset = CacheSession.reset

    def shared_reset(self):  # the bug this guards against: one cache for every session
        reset(self)
        shared.clear()
        self._branches = shared

    monkeypatch.setattr(CacheSession, "reset", shared_reset)
    results, errors = _in_lockstep(pipes)
    assert not _same(results, errors, expected)
