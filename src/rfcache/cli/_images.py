"""Generated images and videos: which class labels to sample; a grid of images as one PNG, videos as an
animated GIF or MP4 or a PNG strip of their frames; every file written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rfcache.outputs import write_file

__all__ = ["SAMPLE_SUFFIXES", "check_sample_suffix", "cycle_labels", "save_grid", "save_output"]

#: what a sample file may be: images are a PNG grid; videos a .gif, .mp4 or a .png strip of frames
SAMPLE_SUFFIXES = (".png", ".gif", ".mp4")


def check_sample_suffix(pipe: object, out: Path) -> None:
    """Before generating: an image pipeline's ``--out`` is a ``.png`` (a video's may also be .gif/.mp4)."""
    from rfcache.errors import RfcacheError
    from rfcache.runtime.runspec import pipeline_params

    if "num_frames" not in pipeline_params(pipe) and out.suffix.lower() != ".png":
        raise RfcacheError(f"--out {out}: images are written as .png")


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
    return write_file(out, lambda tmp: image.save(tmp, format="PNG"), flag="--out")


def save_output(samples: np.ndarray, out: Path, *, scale: int | None = None, fps: int = 8) -> Path:
    """Images ``(N, H, W, C)`` as a PNG grid; videos ``(N, F, H, W, C)`` as ``.gif``/``.mp4``
    (the videos side by side) or ``.png`` (one row of frames per video). Values in [0, 1]."""
    from rfcache.errors import RfcacheError

    suffix = out.suffix.lower()
    if scale is None:
        scale = 4 if samples.ndim == 4 and samples.shape[-2] < 64 else 1
    if samples.ndim == 4:
        if suffix != ".png":
            raise RfcacheError(f"--out {out}: images are written as .png")
        return save_grid(samples, out, scale=scale)
    n, f, h, w, c = samples.shape
    if suffix == ".png":
        return save_grid(samples.reshape(n * f, h, w, c), out, scale=scale, cols=f)
    if suffix not in (".gif", ".mp4"):
        raise RfcacheError(f"--out {out}: a video is written as .gif, .mp4 or .png (a strip of frames)")
    frames = np.concatenate(list(samples), axis=2).repeat(scale, axis=1).repeat(scale, axis=2)  # (F, H, N*W, C)
    pixels = (np.clip(frames, 0, 1) * 255).round().astype("uint8")

    def write(tmp: Path) -> None:
        if suffix == ".gif":
            from PIL import Image

            images = [Image.fromarray(p[..., 0] if c == 1 else p) for p in pixels]
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
            return
        try:
            import imageio.v3 as iio

            iio.imwrite(tmp, pixels, fps=fps, codec="libx264", plugin="pyav" if _has("av") else None)
        except (ImportError, ValueError, OSError, RuntimeError) as exc:
            raise RfcacheError(
                f"--out {out}: cannot write MP4 here ({type(exc).__name__}); pip install imageio[ffmpeg] "
                "or write a .gif"
            ) from exc

    return write_file(out, write, flag="--out", suffix=suffix)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
