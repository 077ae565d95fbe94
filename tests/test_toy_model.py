import json

import numpy as np
import pytest
import torch

import rfcache
from rfcache.evaluate.digits import class_agreement, to_digits_features
from rfcache.models.toy import TOY_CONFIG, TOY_WEIGHTS_DIR, load_digits_images


def test_weights_ship_with_the_package_and_record_their_recipe():
    weights = TOY_WEIGHTS_DIR / "transformer" / "diffusion_pytorch_model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 20 * 1024 * 1024
    record = json.loads((TOY_WEIGHTS_DIR / "training.json").read_text())
    assert record["seed"] == 0 and "command" in record and record["steps"] > 0


def test_toy_pipeline_loads_offline_and_generates():
    pipe = rfcache.load_pipeline("toy")
    assert not pipe.transformer.training
    assert dict(pipe.transformer.config) | TOY_CONFIG == dict(pipe.transformer.config)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": 8, "guidance_scale": 2.0, "output_type": "np"}
    a = pipe(class_labels=[3, 4], generator=torch.Generator().manual_seed(0), **kwargs).images
    b = pipe(class_labels=[3, 4], generator=torch.Generator().manual_seed(0), **kwargs).images
    assert a.shape == (2, 16, 16, 1) and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)


def test_unknown_class_label_is_refused():
    pipe = rfcache.load_pipeline("toy")
    with pytest.raises(ValueError, match=r"class label 10 is outside 0\.\.9"):
        pipe(class_labels=[10], num_inference_steps=2)


def test_classifier_recognises_real_digits_after_the_round_trip():
    images, labels = load_digits_images()  # (N, 1, 16, 16) in [-1, 1]
    assert class_agreement((images + 1) / 2, labels.numpy()) > 0.9  # 8->16->8 px is not lossless
    assert to_digits_features((images[:2] + 1) / 2).shape == (2, 64)


@pytest.mark.slow
def test_toy_model_draws_recognisable_digits():
    pipe = rfcache.load_pipeline("toy")
    pipe.set_progress_bar_config(disable=True)
    labels = [c for c in range(10) for _ in range(5)]  # 0.94 at seed 0
    images = pipe(class_labels=labels, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert class_agreement(images, labels) >= 0.9
