"""Video I/O for the video endpoint: limit-checked frame reading and H.264 writing (ffmpeg).

Frames are streamed, never all held in memory: `read_video` yields batches of frames, and
`VideoWriter` encodes frames as they come. ffmpeg is the static binary shipped with
`imageio-ffmpeg` (no system install needed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from roadseg.inputs import InputError, Limits

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov")


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    seconds: float
    width: int
    height: int

    @property
    def frames(self) -> int:
        """Frame count estimated from the container's duration and rate."""
        return round(self.fps * self.seconds)


def sniff_video(head: bytes, filename: str) -> None:
    """Cheap container check before ffmpeg runs: MP4/MOV (`ftyp`/`moov` box) or AVI (RIFF)."""
    suffix = Path(filename).suffix.lower()
    if suffix and suffix not in VIDEO_SUFFIXES:
        raise InputError(
            f"{filename}: unsupported video type {suffix} (send MP4, AVI or MOV)",
            415,
            "unsupported_format",
        )
    if not head:
        raise InputError(f"{filename}: empty upload (0 bytes)", 400, "empty")
    is_mp4 = head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
    is_avi = head[:4] == b"RIFF" and head[8:12] == b"AVI "
    if not (is_mp4 or is_avi):
        raise InputError(f"{filename}: not a video (expected MP4, AVI or MOV)", 415, "not_a_video")


def read_video(
    path: str | Path, limits: Limits, batch: int = 8
) -> tuple[VideoInfo, Iterator[list[np.ndarray]]]:
    """The video's info and an iterator over batches of RGB uint8 frames, within the limits.

    The container's declared duration and frame count are checked first; decoding then stops
    with InputError 413 if more frames arrive than `max_video_frames` (headers can lie).
    """
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(gen)
    except (RuntimeError, OSError, StopIteration) as e:
        gen.close()
        raise InputError(
            f"not a readable video ({str(e).splitlines()[0][:200]})", 400, "corrupt_video"
        ) from None
    w, h = meta.get("size") or (0, 0)
    fps = float(meta.get("fps") or 0.0)
    seconds = float(meta.get("duration") or 0.0)
    info = VideoInfo(fps, seconds, int(w), int(h))
    problems = []
    if w < 1 or h < 1:
        problems.append((400, "corrupt_video", "video has no frame size"))
    elif w * h > limits.max_image_pixels:
        problems.append(
            (413, "too_many_pixels", f"frames of {w}x{h} exceed {limits.max_image_pixels} pixels")
        )
    if seconds > limits.max_video_seconds:
        problems.append(
            (
                413,
                "video_too_long",
                f"video lasts {seconds:.1f} s, over the limit of {limits.max_video_seconds} s",
            )
        )
    if info.frames > limits.max_video_frames:
        problems.append(
            (
                413,
                "video_too_many_frames",
                f"video has ~{info.frames} frames, over the limit of {limits.max_video_frames}",
            )
        )
    if problems:
        gen.close()
        status, problem, message = problems[0]
        raise InputError(message, status, problem)

    def batches() -> Iterator[list[np.ndarray]]:
        n, chunk = 0, []
        try:
            for raw in gen:
                n += 1
                if n > limits.max_video_frames:
                    raise InputError(
                        f"video has more than {limits.max_video_frames} frames",
                        413,
                        "video_too_many_frames",
                    )
                chunk.append(np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3))
                if len(chunk) == batch:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
            if n == 0:
                raise InputError("video has no decodable frames", 400, "corrupt_video")
        except RuntimeError as e:
            raise InputError(
                f"video is corrupt ({str(e).splitlines()[0][:200]})", 400, "corrupt_video"
            ) from None
        finally:
            gen.close()

    return info, batches()


class VideoWriter:
    """H.264 MP4 writer fed RGB uint8 frames one at a time (odd sizes are padded to even)."""

    def __init__(self, path: str | Path, size: tuple[int, int], fps: float) -> None:
        import imageio_ffmpeg

        self.path = Path(path)
        self._gen = imageio_ffmpeg.write_frames(
            str(self.path),
            size,  # (W, H)
            fps=fps or 25.0,
            codec="libx264",
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            output_params=["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"],
        )
        self._gen.send(None)

    def write(self, frame: np.ndarray) -> None:
        self._gen.send(np.ascontiguousarray(frame, dtype=np.uint8))

    def close(self) -> None:
        self._gen.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
