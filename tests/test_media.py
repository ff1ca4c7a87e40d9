"""Media loading: orientation, uniform frame sampling, typed errors for bad files."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from composir.data.media import load_image, load_media, load_video, uniform_indices, write_video
from composir.errors import MediaError


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    Image.new("L", (8, 8), 128).save(tmp_path / "g.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "g.png").mode == "RGB"
    assert load_image(tmp_path / "a.png").mode == "RGB"


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "missing"])
def test_bad_images_raise_media_error(tmp_path, kind):
    path = tmp_path / "bad.jpg"
    if kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "text":
        path = tmp_path / "notes.png"
        path.write_text("this is not an image")
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(MediaError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def _covr_sample_frames(vlen: int, frames_per_video: int) -> list[int]:
    """CoVR's ``sample_frames`` (src/data/embs.py), restated: segment bounds from an integer-cast
    linspace, the middle of each segment's first and last frame."""
    bounds = np.linspace(start=0, stop=vlen, num=min(vlen, frames_per_video) + 1).astype(int)
    return [(int(a) + int(b) - 1) // 2 for a, b in itertools.pairwise(bounds)]


def test_uniform_indices_are_covrs_segment_centres():
    for vlen in range(1, 400, 7):
        for k in (1, 4, 8, 15):
            if vlen >= k:
                assert uniform_indices(vlen, k) == _covr_sample_frames(vlen, k), (vlen, k)
    assert uniform_indices(8, 4) == [0, 2, 4, 6]
    assert uniform_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # short: every frame, repeated in order
    assert uniform_indices(0, 4) == []


def test_video_segment_and_middle_sampling(tmp_path):
    frames = [np.full((32, 32, 3), 10 * i, np.uint8) for i in range(17)]
    path = tmp_path / "v.mp4"
    write_video(path, frames)
    out = load_video(path, 4)
    assert len(out) == 4
    means = [np.asarray(f, dtype=float).mean() for f in out]
    # CoVR's segments of 17 frames: bounds 0, 4, 8, 12, 17 -> frames 1, 5, 9, 14.
    assert means == pytest.approx([10, 50, 90, 140], abs=4)
    assert len(load_media(path, 3)) == 3
    # CoVR's reference frame: N // 2 = 8, alone, whatever the frame count asked.
    middle = load_media(path, 15, sampling="middle")
    assert len(middle) == 1 and np.asarray(middle[0], dtype=float).mean() == pytest.approx(80, abs=4)


def test_bad_videos_raise_media_error(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 1000)
    for path in (empty, garbage, tmp_path / "missing.mp4"):
        with pytest.raises(MediaError):
            load_video(path)
    with pytest.raises(MediaError, match="unsupported file type"):
        load_media(tmp_path / "x.txt")


def test_pixel_bound_reduces_jpegs_and_refuses_other_formats_from_the_header(tmp_path):
    jpeg, png = tmp_path / "big.jpg", tmp_path / "big.png"
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(jpeg, "JPEG")
    Image.new("RGB", (3000, 3000), (200, 30, 30)).save(png, "PNG")
    reduced = load_image(jpeg, max_pixels=4_000_000)
    assert reduced.width * reduced.height <= 4_000_000 and reduced.width >= 1000  # draft: 1/2 or 1/4 scale
    assert load_image(jpeg).size == (4000, 3000)  # no bound: full size
    with pytest.raises(MediaError, match=r"3000x3000 \(9.0 megapixels\); the limit is 4.0"):
        load_image(png, max_pixels=4_000_000)
    with pytest.raises(MediaError, match=r"limit is 0\.1 megapixels"):
        load_image(jpeg, max_pixels=100_000)  # even 1/8 scale (500x375) is over
