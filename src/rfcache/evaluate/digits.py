"""Distribution-level quality for the embedded toy model: does a sample look like its digit?

A logistic-regression classifier is fitted on scikit-learn's real 8x8 digits (deterministic,
well under a second); generated 16x16 samples are area-downsampled to 8x8 and rescaled to the
digits' 0..16 range before classification.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["class_agreement", "digits_classifier", "to_digits_features"]


@lru_cache(maxsize=1)
def digits_classifier():
    """A pipeline (standardise + logistic regression) fitted on all of ``load_digits``."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5, random_state=0))
    return model.fit(digits.data, digits.target)


def to_digits_features(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images in [0, 1], ``(N, H, W, 1)`` numpy or ``(N, 1, H, W)`` torch -> ``(N, 64)`` in 0..16."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.shape[-1] == 1 and x.ndim == 4 and x.shape[1] != 1:
        x = x.permute(0, 3, 1, 2)  # (N, H, W, 1) -> (N, 1, H, W)
    x = torch.nn.functional.adaptive_avg_pool2d(x.float(), (8, 8))  # (N, 1, 8, 8)
    return (x.clamp(0, 1) * 16).flatten(1).numpy()


def class_agreement(images: torch.Tensor | np.ndarray, labels: list[int] | np.ndarray) -> float:
    """Share of images the real-digits classifier assigns to their conditioning class."""
    predicted = digits_classifier().predict(to_digits_features(images))
    return float(np.mean(predicted == np.asarray(labels)))
