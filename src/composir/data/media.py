"""Pixels from disk: images via Pillow, videos via PyAV with uniform frame sampling.

Every failure raises :class:`composir.errors.MediaError` naming the file, so batch jobs can
skip the item and report it. An image is returned as one frame; a video as ``num_frames``.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from composir.errors import MediaError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v"}


def media_type_of(path: str | Path) -> str | None:
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode may cost, checked from the file's header before decoding (and, for a
    video's time, while decoding). None: no limit."""

    max_pixels: int | None = None  # per image or video frame (a JPEG is first decoded reduced)
    max_bytes: int | None = None  # memory of one image's decode: pixels x (its bands + 3 for RGB)
    max_video_frames: int | None = None  # frames in the stream
    max_seconds: float | None = None  # wall time of one video's decode
    # Asked now and then while a video decodes: True stops it (the service: its client has gone).
    cancelled: Callable[[], bool] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, limits: DecodeLimits | None, max_pixels: int | None) -> DecodeLimits:
        limits = limits or cls()
        return limits if max_pixels is None else replace(limits, max_pixels=max_pixels)


def _bound_bytes(img: Image.Image, path: Path, max_bytes: int | None) -> None:
    needed = img.width * img.height * (len(img.getbands()) + 3)  # the decoded image and its RGB copy
    if max_bytes and needed > max_bytes:
        raise MediaError(
            path, f"decoding it would take {needed / 2**20:.0f} MiB; the limit is {max_bytes / 2**20:.0f} MiB"
        )


def _bound_pixels(img: Image.Image, path: Path, max_pixels: int | None) -> None:
    """Refuse (before decoding) an image of more than ``max_pixels``; a JPEG is first asked to
    decode at 1/2, 1/4 or 1/8 scale (``draft``), which costs a fraction of a full decode."""
    if not max_pixels or img.width * img.height <= max_pixels:
        return
    if img.format == "JPEG":
        scale = math.sqrt(img.width * img.height / max_pixels)
        # draft picks the largest reduction whose size is at least the one asked for: asking for
        # 1/(2*scale) makes that reduction at least `scale`, so the result fits.
        img.draft("RGB", (max(1, int(img.width / (2 * scale))), max(1, int(img.height / (2 * scale)))))
    if img.width * img.height > max_pixels:
        raise MediaError(
            path,
            f"image is {img.width}x{img.height} ({img.width * img.height / 1e6:.1f} megapixels); "
            f"the limit is {max_pixels / 1e6:.1f} megapixels",
        )


def load_image(path: str | Path, max_pixels: int | None = None, limits: DecodeLimits | None = None) -> Image.Image:
    """Open an image as RGB with its EXIF orientation applied; ``max_pixels`` / ``limits`` bound the decode."""
    path = Path(path)
    limits = DecodeLimits.of(limits, max_pixels)
    try:
        with Image.open(path) as img:
            _bound_pixels(img, path, limits.max_pixels)
            _bound_bytes(img, path, limits.max_bytes)
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")
    except MediaError:
        raise
    except FileNotFoundError as exc:
        raise MediaError(path, "file not found") from exc
    except UnidentifiedImageError as exc:
        raise MediaError(path, "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError during load().
        raise MediaError(path, f"corrupt or unreadable image ({exc})") from exc


FRAME_SAMPLINGS = ("segments", "middle")


def uniform_indices(num_available: int, num_frames: int) -> list[int]:
    """CoVR's frame sampling (its ``sample_frames``): split ``[0, num_available)`` at
    ``int(linspace(0, num_available, num_frames + 1))`` and take the middle of each segment,
    ``(start + end - 1) // 2``. A video shorter than ``num_frames`` repeats frames, in order."""
    if num_available <= 0:
        return []
    if num_available < num_frames:
        return [i * num_available // num_frames for i in range(num_frames)]
    bounds = np.linspace(0, num_available, num_frames + 1).astype(int)
    return [int((start + end - 1) // 2) for start, end in itertools.pairwise(bounds)]


def frame_indices(num_available: int, num_frames: int, sampling: str = "segments") -> list[int]:
    """Which frames to decode: ``segments`` (``uniform_indices``) or ``middle``, the one frame
    ``num_available // 2`` (CoVR's reference frame; ``num_frames`` is then ignored)."""
    if sampling == "middle":
        return [num_available // 2] if num_available > 0 else []
    if sampling != "segments":
        raise ValueError(f"frame sampling must be one of {list(FRAME_SAMPLINGS)}, got {sampling!r}")
    return uniform_indices(num_available, num_frames)


def load_video(
    path: str | Path,
    num_frames: int = 8,
    max_pixels: int | None = None,
    limits: DecodeLimits | None = None,
    sampling: str = "segments",
) -> list[Image.Image]:
    """Decode ``num_frames`` frames sampled over the whole video (``frame_indices``; frames of more
    than ``max_pixels``, or a stream over ``limits.max_video_frames``, refused before decoding; a
    decode past ``limits.max_seconds`` stopped)."""
    import av

    path = Path(path)
    limits = DecodeLimits.of(limits, max_pixels)
    max_pixels = limits.max_pixels
    deadline = time.monotonic() + limits.max_seconds if limits.max_seconds else None
    if not path.is_file():
        raise MediaError(path, "file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if max_pixels and width * height > max_pixels:
                raise MediaError(
                    path, f"video frames are {width}x{height}; the limit is {max_pixels / 1e6:.1f} megapixels"
                )
            total = stream.frames
            if total <= 0:
                # Some containers do not store a frame count: count packets without decoding.
                total = sum(1 for packet in container.demux(stream) if packet.size)
                container.seek(0)
            if limits.max_video_frames and total > limits.max_video_frames:
                raise MediaError(path, f"video has {total} frames; the limit is {limits.max_video_frames}")
            wanted = frame_indices(total, num_frames, sampling)
            if not wanted:
                raise MediaError(path, "video has no frames")
            needed = set(wanted)
            decoded: dict[int, Image.Image] = {}
            last = max(needed)
            for index, frame in enumerate(container.decode(stream)):
                if limits.cancelled is not None and index % 16 == 0 and limits.cancelled():
                    raise MediaError(path, "decoding was cancelled (the request went away)")
                if deadline is not None and time.monotonic() > deadline:
                    raise MediaError(path, f"decoding took longer than {limits.max_seconds:g} s")
                if index in needed:
                    decoded[index] = frame.to_image().convert("RGB")
                if index >= last:
                    break
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(path, f"corrupt or unreadable video ({exc})") from exc
    if not decoded:
        raise MediaError(path, "video has no decodable frames")
    # A frame count in the header can exceed what decodes; fall back to the last decoded frame.
    fallback = decoded[max(decoded)]
    return [decoded.get(i, fallback) for i in wanted]


def load_media(
    path: str | Path,
    num_frames: int = 8,
    media_type: str | None = None,
    max_pixels: int | None = None,
    limits: DecodeLimits | None = None,
    sampling: str = "segments",
) -> list[Image.Image]:
    """Frames of an image (one) or a video (``num_frames``, chosen by ``sampling``: see
    ``frame_indices``); ``max_pixels`` bounds each frame, ``limits`` what one decode may cost."""
    kind = media_type or media_type_of(path)
    if kind == "video":
        return load_video(path, num_frames, max_pixels, limits, sampling)
    if kind == "image":
        return [load_image(path, max_pixels, limits)]
    raise MediaError(path, f"unsupported file type {Path(path).suffix!r}")


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int = 8) -> None:
    """Encode uint8 HxWx3 frames as H.264 (MPEG-4 part 2 where libx264 is unavailable)."""
    import av

    path = Path(path)
    height, width = frames[0].shape[:2]
    with warnings.catch_warnings(), av.open(str(path), mode="w") as container:
        warnings.simplefilter("ignore")
        try:
            stream = container.add_stream("libx264", rate=fps)
            stream.options = {"crf": "18", "preset": "veryfast"}
        except (av.error.FFmpegError, ValueError):
            stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        for array in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
