import pytest
import torch

import rfcache
from rfcache.runtime import policies as policies_module
from rfcache.runtime import session as session_module
from tests.conftest import generate

STEPS = 12


def test_method_none_is_bit_identical(tiny_pipe):
    reference = generate(tiny_pipe, steps=STEPS)
    rfcache.enable(tiny_pipe, method="none")
    cached = generate(tiny_pipe, steps=STEPS)
    summary = rfcache.summary(tiny_pipe)
    assert torch.equal(cached, reference)
    assert summary.pattern == "C" * STEPS and summary.flops_fraction == 1.0


@pytest.mark.parametrize(
    "method,params",
    [
        ("fora", {"interval": 1}),
        ("taylorseer", {"interval": 1, "order": 2}),
        ("rfe", {"interval": 1}),
        ("rfc", {"tau": 0.0}),
        ("rcs", {"warmup": STEPS, "tau": 1e9}),
    ],
)
def test_all_compute_schedules_are_bit_identical(tiny_pipe, method, params):
    reference = generate(tiny_pipe, steps=STEPS)
    rfcache.enable(tiny_pipe, method=method, share_conditioning=False, **params)
    cached = generate(tiny_pipe, steps=STEPS)
    assert rfcache.summary(tiny_pipe).num_full_steps == STEPS
    assert torch.equal(cached, reference)


def test_disable_restores_the_original_model(tiny_pipe):
    reference = generate(tiny_pipe, steps=STEPS)
    forwards = {name: m.forward for name, m in tiny_pipe.transformer.named_modules()}
    rfcache.enable(tiny_pipe, method="rfc", tau=0.5)
    assert not torch.equal(generate(tiny_pipe, steps=STEPS), reference)
    rfcache.disable(tiny_pipe)
    assert torch.equal(generate(tiny_pipe, steps=STEPS), reference)
    assert {name: m.forward for name, m in tiny_pipe.transformer.named_modules()} == forwards
    assert not tiny_pipe.transformer._forward_pre_hooks
    with pytest.raises(rfcache.RfcacheError, match="not enabled"):
        rfcache.summary(tiny_pipe)


@pytest.mark.parametrize("method", ["fora", "taylorseer", "rfe", "rcs", "rfc"])
def test_generations_in_a_row_are_identical(tiny_pipe, method):
    rfcache.enable(tiny_pipe, method=method, interval=3, tau=0.3)
    first = generate(tiny_pipe, steps=STEPS)
    first_summary = rfcache.summary(tiny_pipe)
    second = generate(tiny_pipe, steps=STEPS)
    assert torch.equal(first, second)
    assert rfcache.summary(tiny_pipe) == first_summary
    assert "P" in first_summary.pattern


def test_interval_pattern_and_flop_fraction_are_exact(tiny_pipe):
    rfcache.enable(tiny_pipe, method="fora", interval=4, warmup=2)
    generate(tiny_pipe, steps=STEPS)
    s = rfcache.summary(tiny_pipe)
    expected = "".join("C" if full else "P" for full in policies_module.interval_mask(STEPS, 4, 2))
    assert s.pattern == expected == "CCPPPCPPPCPP"
    nfc = expected.count("C")
    assert s.num_full_steps == nfc and s.num_steps == STEPS
    # reuse adds nothing: the fraction is exactly NFC / steps of the analytic module FLOPs
    assert s.computed_module_flops * STEPS == s.module_flops * nfc
    assert s.flops_fraction == pytest.approx(nfc / STEPS, abs=1e-12)
    assert s.total_flops == s.full_flops - s.module_flops + s.computed_module_flops


def test_predictor_cost_is_counted(tiny_pipe):
    rfcache.enable(tiny_pipe, method="rfe", interval=4, warmup=2)
    generate(tiny_pipe, steps=STEPS)
    s = rfcache.summary(tiny_pipe)
    assert s.predictor_flops > 0
    assert s.flops_fraction == pytest.approx((s.computed_module_flops + s.predictor_flops) / s.module_flops)
    assert s.flops_fraction > s.pattern.count("C") / STEPS


def test_rcs_extremes_and_cap(tiny_pipe):
    rfcache.enable(tiny_pipe, method="rcs", tau=0.0, warmup=2)
    generate(tiny_pipe, steps=STEPS)
    assert rfcache.summary(tiny_pipe).pattern == "C" * STEPS
    rfcache.disable(tiny_pipe)

    rfcache.enable(tiny_pipe, method="rcs", tau=float("inf"), warmup=3)
    generate(tiny_pipe, steps=STEPS)
    assert rfcache.summary(tiny_pipe).pattern == "CCC" + "P" * (STEPS - 3)
    rfcache.disable(tiny_pipe)

    rfcache.enable(tiny_pipe, method="rfc", tau=float("inf"), warmup=2, max_cached=3)
    generate(tiny_pipe, steps=STEPS)
    pattern = rfcache.summary(tiny_pipe).pattern
    assert pattern == "CC" + "PPPC" * 2 + "PP"
    assert "PPPP" not in pattern


def test_relational_needs_two_full_steps_before_predicting(tiny_pipe):
    rfcache.enable(tiny_pipe, method="rfe", interval=3, warmup=0)
    generate(tiny_pipe, steps=STEPS)
    # the schedule's first full step is step 2 (interval - 1); steps 0-1 are forced full: RFE needs two
    assert rfcache.summary(tiny_pipe).pattern.startswith("CCCPPC")
    rfcache.disable(tiny_pipe)
    rfcache.enable(tiny_pipe, method="rfc", tau=float("inf"), warmup=0)
    generate(tiny_pipe, steps=STEPS)
    assert rfcache.summary(tiny_pipe).pattern.startswith("CCP")


def test_nonfinite_predictions_fall_back_to_computation(tiny_pipe, monkeypatch):
    reference = generate(tiny_pipe, steps=STEPS)
    monkeypatch.setattr(session_module, "weighted_sum", lambda d, c, **kw: d[0] * float("nan"))
    # warm-up 2: every cached step has two full steps behind it, so every prediction is a Taylor forecast
    rfcache.enable(tiny_pipe, method="taylorseer", interval=3, warmup=2, share_conditioning=False)
    cached = generate(tiny_pipe, steps=STEPS)
    s = rfcache.summary(tiny_pipe)
    assert s.nonfinite_fallbacks > 0 and s.pattern == "C" * STEPS  # each cached step was re-run in full
    assert torch.equal(cached, reference)  # every cached step was replaced by a real computation


def _sequential_cfg(transformer, labels, null, steps=8):
    """A hand-written sampler that calls the transformer once per branch (sequential CFG)."""
    from diffusers import DDIMScheduler

    from rfcache.models.toy import toy_scheduler_config

    sched = DDIMScheduler(**toy_scheduler_config())
    sched.set_timesteps(steps)
    x = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y, y0 = torch.tensor(labels), torch.full((len(labels),), null)
    outs = []
    with torch.no_grad():
        for t in sched.timesteps:
            tt = t.expand(len(labels))
            cond = transformer(x, timestep=tt, class_labels=y).sample
            uncond = transformer(x, timestep=tt, class_labels=y0).sample
            outs.append((cond, uncond))
            x = sched.step(uncond + 2.0 * (cond - uncond), t, x).prev_sample
    return x, outs


def _batched_cfg(transformer, labels, null, steps=8):
    from diffusers import DDIMScheduler

    from rfcache.models.toy import toy_scheduler_config

    sched = DDIMScheduler(**toy_scheduler_config())
    sched.set_timesteps(steps)
    x = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor(list(labels) + [null] * len(labels))
    with torch.no_grad():
        for t in sched.timesteps:
            eps = transformer(torch.cat([x, x]), timestep=t.expand(2 * len(labels)), class_labels=y).sample
            cond, uncond = eps.chunk(2)
            x = sched.step(uncond + 2.0 * (cond - uncond), t, x).prev_sample
    return x


@pytest.mark.parametrize("method", ["taylorseer", "rfe"])
def test_sequential_and_batched_cfg_agree_and_keep_branches_apart(tiny_pipe, method):
    model = tiny_pipe.transformer
    rfcache.enable(model, method=method, interval=3, warmup=2)
    sequential, _ = _sequential_cfg(model, [3, 5], 10)
    s = rfcache.summary(model)
    assert s.patterns == ("CCPPCPPC", "CCPPCPPC") and s.num_calls == 16
    batched = _batched_cfg(model, [3, 5], 10)
    torch.testing.assert_close(sequential, batched, rtol=1e-4, atol=1e-5)
    rfcache.disable(model)
    full, _ = _sequential_cfg(model, [3, 5], 10)
    assert not torch.allclose(full, sequential, atol=1e-6)  # caching did something


def test_enable_errors(tiny_pipe):
    with pytest.raises(rfcache.RfcacheError, match="method must be one of"):
        rfcache.enable(tiny_pipe, method="magic")
    with pytest.raises(rfcache.RfcacheError, match="unknown caching parameter"):
        rfcache.enable(tiny_pipe, method="fora", intervall=3)
    with pytest.raises(rfcache.RfcacheError, match="interval must be"):
        rfcache.enable(tiny_pipe, method="fora", interval=0)
    rfcache.enable(tiny_pipe, method="fora")
    with pytest.raises(rfcache.RfcacheError, match="already enabled"):
        rfcache.enable(tiny_pipe, method="rfc")
    with pytest.raises(rfcache.UnsupportedModelError, match="supported families"):
        rfcache.enable(torch.nn.Linear(2, 2))
