"""Image and video files, written atomically (temporary name, then rename)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipelines.io_utils import atomic_path


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write ``[H, W]`` / ``[H, W, 3|4]`` uint8 or ``[H, W]`` uint16 as PNG, atomically."""
    from PIL import Image

    path = Path(path)
    pil = Image.fromarray(np.ascontiguousarray(image))  # uint16 [H, W] -> mode "I;16"
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")
    return path


@contextlib.contextmanager
def video_writer(path: str | Path, fps: int = 30) -> Iterator:
    """H.264 ``.mp4`` writer (imageio-ffmpeg); yields ``append(frame [H, W, 3] uint8)``.

    The file appears only when the block finishes without error. Frame sizes must be even
    (yuv420p); odd sizes are padded by one white row/column.
    """
    import imageio.v2 as imageio

    with atomic_path(path, suffix=".mp4") as tmp:
        writer = imageio.get_writer(
            str(tmp),
            format="FFMPEG",
            fps=fps,
            codec="libx264",
            quality=8,
            pixelformat="yuv420p",
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-movflags", "+faststart"],
        )
        try:

            def append(frame: np.ndarray) -> None:
                h, w = frame.shape[:2]
                if h % 2 or w % 2:
                    frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
                writer.append_data(frame)

            yield append
        finally:
            writer.close()


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video as ``[F, H, W, 3]`` uint8 (for tests and comparisons)."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return np.stack([f for f in reader])
    finally:
        reader.close()
