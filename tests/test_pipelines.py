import pytest
import torch

import rfcache
from tests.conftest import generate, make_tiny_digits_pipeline


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(rfcache.RfcacheError, match="does not exist"):
        rfcache.load_pipeline(tmp_path / "nope")
    with pytest.raises(rfcache.RfcacheError, match=r"no model_index\.json"):
        rfcache.load_pipeline(tmp_path)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ('{"_class_name": "DiTPipel', r"model_index\.json: not valid JSON"),
        ("[1, 2]", r"model_index\.json: expected a JSON object naming its pipeline"),
        ('{"_class_name": "NoSuchPipeline"}', "cannot load pipeline .*NoSuchPipeline"),
    ],
)
def test_a_broken_model_index_is_one_line(index, message, tmp_path):
    (tmp_path / "model_index.json").write_text(index)
    with pytest.raises(rfcache.RfcacheError, match=message) as caught:
        rfcache.load_pipeline(tmp_path)
    assert "\n" not in str(caught.value)


def test_an_unreachable_hub_id_is_one_line_without_misleading_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(rfcache.RfcacheError) as caught:
        rfcache.load_pipeline("no-such-owner/no-such-model")
    assert "local_files_only" not in str(caught.value) and "hub cannot be reached" in str(caught.value)


def test_local_folder_round_trip(tmp_path):
    pipe = make_tiny_digits_pipeline()
    pipe.save_pretrained(tmp_path / "tiny")
    loaded = rfcache.load_pipeline(tmp_path / "tiny")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe) and not loaded.transformer.training
    # loaded weights may sit at other memory alignments, which changes CPU matmul rounding slightly
    torch.testing.assert_close(generate(loaded, steps=4), generate(pipe, steps=4), rtol=0, atol=1e-5)


def test_unsupported_model_lists_families(tmp_path):
    from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel

    class UNetPipe(DiffusionPipeline):
        def __init__(self, unet, scheduler):
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler)

    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    with pytest.raises(rfcache.UnsupportedModelError, match=r"supported families: .*dit"):
        rfcache.get_adapter(UNetPipe(unet, DDIMScheduler()))


def test_dtype_and_device_are_parameters():
    pipe = rfcache.load_pipeline("toy", dtype=torch.float64)
    assert pipe.transformer.dtype == torch.float64
