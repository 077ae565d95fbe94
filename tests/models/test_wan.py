from typing import ClassVar

from rfcache.models.tiny import tiny_transformer
from rfcache.testing import AdapterConformance


class TestWanT2VAdapter(AdapterConformance):
    modules_per_block: ClassVar[dict[str, int]] = {"blocks": 3}

    def make_model(self):
        return tiny_transformer("wan")


class TestWanI2VAdapter(AdapterConformance):
    """Image-to-video: CLIP image tokens, added k/v projections, exactly 512 text tokens."""

    modules_per_block: ClassVar[dict[str, int]] = {"blocks": 3}

    def make_model(self):
        return tiny_transformer("wan", image_dim=24, added_kv_proj_dim=32, num_layers=1)
