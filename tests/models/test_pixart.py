from typing import ClassVar

from rfcache.models.tiny import tiny_transformer
from rfcache.testing import AdapterConformance


class TestPixArtAlphaAdapter(AdapterConformance):
    """PixArt-α-like: resolution / aspect-ratio conditions on."""

    modules_per_block: ClassVar[dict[str, int]] = {"transformer_blocks": 3}

    def make_model(self):
        return tiny_transformer("pixart", use_additional_conditions=True)


class TestPixArtSigmaAdapter(AdapterConformance):
    """PixArt-Σ-like (and PixArt-α below 1024 px): no size conditions; the tiny pipeline's transformer."""

    modules_per_block: ClassVar[dict[str, int]] = {"transformer_blocks": 3}

    def make_model(self):
        return tiny_transformer("pixart")
