from typing import ClassVar

from rfcache.models.tiny import tiny_transformer
from rfcache.testing import AdapterConformance


class TestFluxDevAdapter(AdapterConformance):
    modules_per_block: ClassVar[dict[str, int]] = {"transformer_blocks": 3, "single_transformer_blocks": 3}

    def make_model(self):
        return tiny_transformer("flux")

    def test_units_in_execution_order(self, model, adapter):
        kinds = [(u.block_list, u.kind) for u in adapter.units(model)]
        double = [("transformer_blocks", k) for k in ("attn", "ff", "ff_context")]
        single = [("single_transformer_blocks", k) for k in ("proj_mlp", "attn", "proj_out")]
        assert kinds == double * 2 + single * 2


class TestFluxSchnellAdapter(AdapterConformance):
    """FLUX.1-schnell-like: no guidance embedding."""

    modules_per_block: ClassVar[dict[str, int]] = {"transformer_blocks": 3, "single_transformer_blocks": 3}

    def make_model(self):
        return tiny_transformer("flux", guidance_embeds=False, num_layers=1, num_single_layers=1)
