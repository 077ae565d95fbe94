from diffusers import DiTTransformer2DModel

from rfcache.testing import AdapterConformance


class TestDiTAdapter(AdapterConformance):
    modules_per_block = {"transformer_blocks": 2}

    def make_model(self):
        return DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            num_layers=2,
            sample_size=8,
            num_embeds_ada_norm=10,
        )
