"""A PNG contact sheet of triplets (reference | modification text | target) for people to look at."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from composir.data.media import load_media
from composir.data.records import Benchmark
from composir.utils.io import atomic_save


def _thumb(path: Path, size: int, frames: int) -> Image.Image:
    imgs = load_media(path, num_frames=frames)
    strip = Image.new("RGB", (size * len(imgs), size), "white")
    for i, img in enumerate(imgs):
        strip.paste(img.resize((size, size), Image.Resampling.NEAREST), (i * size, 0))
    return strip


def render_contact_sheet(
    bench: Benchmark, out: str | Path, n: int = 8, thumb: int = 128, video_frames: int = 3, text_width: int = 260
) -> Path:
    """Draw the first ``n`` queries of ``bench`` (spread over its families) as rows of a grid."""
    by_family: dict[str, list] = {}
    for q in bench.queries:
        by_family.setdefault(q.extra.get("family", ""), []).append(q)
    picked: list = []
    while len(picked) < n and any(by_family.values()):
        for queue in by_family.values():
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    video = bench.gallery and bench.gallery[0].media_type == "video"
    frames = video_frames if video else 1
    width = thumb * frames
    font = ImageFont.load_default()
    pad = 8
    sheet = Image.new("RGB", (2 * width + text_width + 4 * pad, len(picked) * (thumb + pad) + pad + 20), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), "reference", fill="black", font=font)
    draw.text((width + 2 * pad, 4), "modification text", fill="black", font=font)
    draw.text((width + text_width + 3 * pad, 4), "target", fill="black", font=font)
    for row, q in enumerate(picked):
        y = 20 + pad + row * (thumb + pad)
        sheet.paste(_thumb(bench.media_item(q.reference_id).path, thumb, frames), (pad, y))
        sheet.paste(_thumb(bench.media_item(q.target_ids[0]).path, thumb, frames), (width + text_width + 3 * pad, y))
        label = f"[{q.extra.get('family', '')}] {q.text}"
        draw.multiline_text((width + 2 * pad, y + 4), "\n".join(textwrap.wrap(label, 40)), fill="black", font=font)
    atomic_save(out, lambda tmp: sheet.save(tmp, format="PNG"))
    return Path(out)
