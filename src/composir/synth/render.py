"""Rasterise scenes to RGB arrays (Pillow's ImageDraw on a numpy background)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from composir.synth.scenes import COLOURS, Scene, SceneObject

_PLAIN = {
    "gray": (128, 128, 128),
    "beige": (225, 210, 175),
    "pink": (240, 175, 195),
    "light blue": (170, 205, 240),
}
_MOTION_STEP = {"still": (0, 0), "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@lru_cache(maxsize=64)
def background(name: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.empty((size, size, 3), np.uint8)
    period = max(4, size // 8)
    if name in _PLAIN:
        img[:] = _PLAIN[name]
    elif name == "striped":
        img[:] = np.where((((xx + yy) // (period // 2)) % 2 == 0)[..., None], (150, 150, 150), (200, 200, 200))
    elif name == "checkered":
        img[:] = np.where((((xx // period) + (yy // period)) % 2 == 0)[..., None], (110, 110, 110), (185, 185, 185))
    elif name == "dotted":
        dots = ((xx % period) - period // 2) ** 2 + ((yy % period) - period // 2) ** 2 <= max(1, period // 5) ** 2
        img[:] = np.where(dots[..., None], (90, 90, 90), (205, 205, 205))
    elif name == "night":
        img[:] = (15, 20, 60)
        stars = ((xx * 7 + yy * 13) % 37 == 0) & (yy < size // 2)
        img[stars] = (240, 240, 200)
    elif name == "snow":
        flakes = (xx * 11 + yy * 5) % 23 == 0
        img[:] = np.where(flakes[..., None], (170, 180, 200), (232, 238, 248))
    elif name == "sand":
        grain = (xx * 3 + yy * 7) % 11 == 0
        img[:] = np.where(grain[..., None], (200, 170, 110), (230, 205, 150))
    elif name == "grass":
        blades = xx % max(3, period // 2) == 0
        img[:] = np.where(blades[..., None], (40, 120, 40), (90, 170, 80))
    elif name == "sunset":
        t = (yy / max(1, size - 1))[..., None]
        img[:] = ((1 - t) * np.array([250, 120, 60]) + t * np.array([120, 50, 110])).astype(np.uint8)
    else:
        raise ValueError(f"unknown background {name!r}")
    img.setflags(write=False)
    return img


def _draw_object(draw: ImageDraw.ImageDraw, o: SceneObject, size: int, offset: tuple[float, float]) -> None:
    cell = size / 3
    cx = (o.cell % 3 + 0.5) * cell + offset[0]
    cy = (o.cell // 3 + 0.5) * cell + offset[1]
    r = cell * (0.42 if o.size == "large" else 0.24)
    fill = COLOURS[o.colour]
    # An outline keeps white/black objects visible on every background.
    outline = (60, 60, 60) if o.colour == "white" else (235, 235, 235) if o.colour == "black" else None
    if o.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline)
    elif o.shape == "square":
        s = r * 0.88
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill, outline=outline)
    elif o.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill, outline=outline)
    elif o.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill, outline=outline)
    elif o.shape == "cross":
        w = r * 0.36
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(f"unknown shape {o.shape!r}")


def render_frames(scene: Scene, size: int, num_frames: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``num_frames`` frames (1 for an image); moving objects travel ~0.3 cell over the clip."""
    jitter = {o.key: rng.uniform(-size / 40, size / 40, 2) for o in scene.objects}
    frames = []
    for t in range(num_frames):
        progress = t / max(1, num_frames - 1) - 0.5
        img = Image.fromarray(background(scene.background, size).copy())
        draw = ImageDraw.Draw(img)
        for o in scene.objects:
            dx, dy = _MOTION_STEP[o.motion]
            travel = 0.3 * size / 3 * progress
            offset = (jitter[o.key][0] + dx * travel, jitter[o.key][1] + dy * travel)
            _draw_object(draw, o, size, offset)
        frames.append(np.asarray(img))
    return frames
