from typing import ClassVar

from rfcache.models import get_adapter
from rfcache.models.tiny import tiny_transformer
from rfcache.testing import AdapterConformance


class TestSD3Adapter(AdapterConformance):
    # units per block vary (SD3.5 dual attention on block 0, no ff_context on the last block):
    # checked exactly in test_units_per_block below instead of via modules_per_block
    modules_per_block: ClassVar[dict[str, int]] = {}

    def make_model(self):
        return tiny_transformer("sd3")

    def test_units_per_block(self, model, adapter):
        kinds = [(u.block_index, u.kind) for u in adapter.units(model)]
        assert kinds == [(0, "attn"), (0, "attn2"), (0, "ff"), (0, "ff_context"), (1, "attn"), (1, "ff")]


class TestSD30Adapter(AdapterConformance):
    """SD3.0-like: no dual attention; three blocks, the last context_pre_only."""

    def make_model(self):
        return tiny_transformer("sd3", dual_attention_layers=(), num_layers=3)

    def test_units_per_block(self, model):
        units = get_adapter(model).units(model)
        assert [u.kind for u in units] == ["attn", "ff", "ff_context"] * 2 + ["attn", "ff"]
