"""Unit wrappers next to another library's instance forward (diffusers' hook registry does that)."""

import functools

import torch

from rfcache.models.hooks import attach_module_hooks, detach_unit_hooks


class _Doubler(torch.nn.Module):
    def forward(self, x):
        return 2 * x


def _add_one_wrapper(module):
    """Another library's wrapper on the instance: adds 1 to what the forward it wraps returns."""
    inner = module.forward
    module.forward = functools.partial(lambda f, x: f(x) + 1, inner)


def _triple_through(path, original, args, kwargs):
    return 3 * original(*args, **kwargs)


def test_detach_puts_back_a_wrapper_set_before():
    model = torch.nn.Sequential(_Doubler())
    _add_one_wrapper(model[0])
    attach_module_hooks(model, ("0",), _triple_through, name="t")
    assert model(torch.ones(1)).item() == 9  # 3 * (2 + 1)
    detach_unit_hooks(model, name="t")
    assert model(torch.ones(1)).item() == 3  # the other wrapper is still there


def test_detach_under_a_wrapper_set_after_passes_through():
    model = torch.nn.Sequential(_Doubler())
    attach_module_hooks(model, ("0",), _triple_through, name="t")
    _add_one_wrapper(model[0])
    assert model(torch.ones(1)).item() == 7  # 3 * 2 + 1
    detach_unit_hooks(model, name="t")
    assert model(torch.ones(1)).item() == 3  # 2 + 1: ours calls straight through
