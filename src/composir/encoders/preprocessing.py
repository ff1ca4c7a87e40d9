"""The peers' own input preprocessing, as switches every encoder takes.

- ``target_pad`` (CLIP4Cir's and SPRC's ``TargetPad``, ratio 1.25 there): an image whose longer
  side exceeds ``ratio`` times its shorter side is padded with black, equally on both sides, to
  that ratio (the pad truncated to whole pixels) before it is resized; other images are untouched.
- ``resize``: ``square`` stretches to size x size (LAVIS's ``blip_image_eval``, CoVR);
  ``shorter_side`` scales the shorter side to size and crops the centre (CLIP, CLIP4Cir, SPRC).
- ``caption_words`` (BLIP's ``pre_caption``, 30 words in CoVR, 50 in LAVIS and SPRC): lower-case,
  the characters ``.!"()*#:;~`` to spaces, runs of whitespace to one space, ends stripped, then
  at most that many words.
"""

from __future__ import annotations

import re

from PIL import Image

from composir.errors import ConfigError

RESIZES = ("square", "shorter_side")
_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


def target_pad(image: Image.Image, ratio: float) -> Image.Image:
    import torchvision.transforms.functional as TF

    w, h = image.size
    if max(w, h) / min(w, h) < ratio:
        return image
    scaled = max(w, h) / ratio
    across, down = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
    return TF.pad(image, [across, down, across, down], 0, "constant")


def resize(image: Image.Image, size: int, how: str) -> Image.Image:
    """``image`` at size x size by the ``how`` policy, bicubic as the peers resize (torchvision's
    own functions on the PIL image, as the peers' Compose pipelines call them)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    if how == "square":
        return image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC)
    return TF.center_crop(TF.resize(image, size, interpolation=InterpolationMode.BICUBIC), size)


def pre_caption(text: str, max_words: int) -> str:
    text = _SPACES.sub(" ", _PUNCTUATION.sub(" ", text.lower())).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def check_policy(target_pad_ratio: float | None, resize_how: str, caption_words: int | None, where: str) -> None:
    """One line naming the bad setting, before any model is built."""
    if target_pad_ratio is not None and not target_pad_ratio >= 1:
        raise ConfigError(f"{where}.target_pad must be a ratio of at least 1 (CLIP4Cir: 1.25), got {target_pad_ratio}")
    if resize_how not in RESIZES:
        raise ConfigError(f"{where}.resize must be one of {list(RESIZES)}, got {resize_how!r}")
    if caption_words is not None and (isinstance(caption_words, bool) or int(caption_words) < 1):
        raise ConfigError(f"{where}.caption_words must be a positive number of words, got {caption_words!r}")
