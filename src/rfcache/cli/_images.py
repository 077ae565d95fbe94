"""Generated images: which class labels to sample, and a grid of samples as one PNG, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["cycle_labels", "save_grid"]


def cycle_labels(requested: tuple[int, ...], num_classes: int, num: int) -> list[int]:
    """``num`` labels cycling through ``requested`` (default: every class, 0, 1, 2, ...)."""
    labels = list(requested) or list(range(max(num_classes, 1)))
    return [labels[i % len(labels)] for i in range(num)]


def save_grid(images: np.ndarray, out: Path, *, scale: int = 1, cols: int = 10) -> Path:
    """Save ``(N, H, W, C)`` images in [0, 1] as one PNG grid (at most ``cols`` per row), upscaled ``scale``x."""
    from PIL import Image

    n, h, w, c = images.shape
    cols = min(n, cols)
    rows = -(-n // cols)
    grid = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, c), dtype=images.dtype)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = img
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    pixels = (grid * 255).round().astype("uint8")
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(out)
    return out
