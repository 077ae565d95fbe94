"""Distribution-level quality for the embedded toy model: does a sample look like its digit?

A logistic-regression classifier is fitted on scikit-learn's real 8x8 digits (deterministic,
well under a second); generated 16x16 samples are area-downsampled to 8x8 and rescaled to the
digits' 0..16 range before classification.

For a Fréchet distance between generated and real digits, a second small classifier gives the
feature space: standardisation, then one hidden ReLU layer of 32 units (scikit-learn's
``MLPClassifier``, Adam, ``random_state=0``, 300 epochs, all 1,797 real digits; about two seconds,
bit-identical on every run). Its hidden activations are the features; the real digits' features
are the reference Gaussian.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "class_agreement",
    "digits_classifier",
    "digits_feature_net",
    "digits_features",
    "digits_frechet_distance",
    "real_digits_statistics",
    "to_digits_features",
]


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


@lru_cache(maxsize=1)
def digits_feature_net():
    """Standardiser + one-hidden-layer (32 ReLU) classifier fitted on all of ``load_digits``, seeded."""
    import warnings

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    net = make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, alpha=1e-3, random_state=0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return net.fit(digits.data, digits.target)


def digits_features(pixels: np.ndarray) -> np.ndarray:
    """``(N, 64)`` digits in 0..16 -> ``(N, 32)`` hidden activations of :func:`digits_feature_net`."""
    scaler, mlp = digits_feature_net()
    hidden = scaler.transform(np.asarray(pixels, dtype=np.float64)) @ mlp.coefs_[0] + mlp.intercepts_[0]
    return np.maximum(hidden, 0.0)


@lru_cache(maxsize=1)
def real_digits_statistics() -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the real digits' features: the reference of :func:`digits_frechet_distance`."""
    from sklearn.datasets import load_digits

    from rfcache.evaluate.metrics import feature_statistics

    return feature_statistics(digits_features(load_digits().data))


def digits_frechet_distance(images: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between generated digits (images in [0, 1]) and the real digits, in feature space.

    Like FID it is biased upwards for few samples; compare methods at the same sample count.
    """
    from rfcache.evaluate.metrics import feature_statistics, frechet_distance

    mu, sigma = feature_statistics(digits_features(to_digits_features(images)))
    return frechet_distance(mu, sigma, *real_digits_statistics())
