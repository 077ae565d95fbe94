from rfcache.models.tiny import tiny_transformer
from rfcache.testing import AdapterConformance


class TestPixArtAlphaAdapter(AdapterConformance):
    """PixArt-α-like: resolution / aspect-ratio conditions on."""

    modules_per_block = {"transformer_blocks": 3}

    def make_model(self):
        return tiny_transformer("pixart")


class TestPixArtSigmaAdapter(AdapterConformance):
    """PixArt-Σ-like: no size conditions."""

    modules_per_block = {"transformer_blocks": 3}

    def make_model(self):
        return tiny_transformer("pixart", use_additional_conditions=False)
