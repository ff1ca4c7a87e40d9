"""Training-time augmentations, registered by name so a run config picks one (``data.augment``)."""

from __future__ import annotations

import random
from collections.abc import Callable

from PIL import Image, ImageOps

Augment = Callable[[list[Image.Image], random.Random], list[Image.Image]]


def _none(frames: list[Image.Image], rng: random.Random) -> list[Image.Image]:
    return frames


def _light(frames: list[Image.Image], rng: random.Random) -> list[Image.Image]:
    """Small shift by padding and cropping back (keeps layout words like 'top left' true)."""
    w, h = frames[0].size
    pad = max(1, w // 32)
    dx, dy = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
    fills = [f.getpixel((0, 0)) for f in frames]  # an RGB pixel each
    return [
        ImageOps.expand(f, pad, fill=tuple(fill)).crop((dx, dy, dx + w, dy + h))  # type: ignore[arg-type]
        for f, fill in zip(frames, fills)
    ]


# Augmentations are registered by name so a config picks one; none flips (left/right words).
AUGMENTATIONS: dict[str, Augment] = {"none": _none, "light": _light}
