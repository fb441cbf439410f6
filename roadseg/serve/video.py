"""Video I/O for the video endpoint: limit-checked frame reading and H.264 writing (ffmpeg).

Frames are streamed, never all held in memory: `read_video` yields batches of frames, and
`VideoWriter` encodes frames as they come. ffmpeg is the static binary shipped with
`imageio-ffmpeg` (no system install needed).
"""

from __future__ import annotations

import contextlib
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse

from roadseg.inference.render import colorize, encode_png, overlay
from roadseg.serve.decoding import Budget, Limits
from roadseg.serve.errors import InputError
from roadseg.serve.inputs import safe_filename

if TYPE_CHECKING:
    from fastapi import UploadFile

    from roadseg.serve.api import ServingState

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov")
# H.264's largest frame (level 6.2: 139264 macroblocks, a side of at most ~16880 px); wider
# frames would fail in the encoder after all the decoding and inference were paid for.
H264_MAX_SIDE = 16384
H264_MAX_PIXELS = 139264 * 256


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
    path: str | Path, limits: Limits, batch: int = 8, budget: Budget | None = None
) -> tuple[VideoInfo, Iterator[list[np.ndarray]]]:
    """The video's info and an iterator over batches of RGB uint8 frames, within the limits.

    The container's declared size, duration and frame count (and their pixels against the
    request's budget) are checked first; decoding then stops with InputError 413 once more
    frames, pixels or seconds (frames / fps) arrive than allowed: headers and metadata can lie
    (a title tag reading `Duration: 00:00:01.00` fools the header parser).
    """
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(gen)
    except Exception as e:  # ffmpeg's header text is parsed with regexes: crafted ones break it
        gen.close()
        raise InputError(
            f"not a readable video ({str(e).splitlines()[0][:200]})", 400, "corrupt_video"
        ) from None
    w, h = meta.get("size") or (0, 0)
    fps = float(meta.get("fps") or 0.0)
    seconds = float(meta.get("duration") or 0.0)
    info = VideoInfo(fps, seconds, int(w), int(h))
    problems = _problems(info, limits)
    budget = budget or Budget(limits)
    if problems:
        gen.close()
        status, problem, message = problems[0]
        raise InputError(message, status, problem)
    try:
        budget.charge("video", pixels=w * h * info.frames)
    except InputError:
        gen.close()
        raise
    return info, _batches(gen, info, limits, batch, budget)


def _problems(info: VideoInfo, limits: Limits) -> list[tuple[int, str, str]]:
    w, h, seconds = info.width, info.height, info.seconds
    problems = []
    if w < 1 or h < 1:
        problems.append((400, "corrupt_video", "video has no frame size"))
    elif w * h > limits.max_image_pixels:
        problems.append(
            (413, "too_many_pixels", f"frames of {w}x{h} exceed {limits.max_image_pixels} pixels")
        )
    elif max(w, h) > H264_MAX_SIDE or w * h > H264_MAX_PIXELS:
        problems.append(
            (413, "too_large_for_h264", f"frames of {w}x{h} are too large for an H.264 answer")
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
    return problems


def _batches(
    gen: Iterator[bytes], info: VideoInfo, limits: Limits, batch: int, budget: Budget
) -> Iterator[list[np.ndarray]]:
    w, h = info.width, info.height
    n, chunk = 0, []  # the declared frames were charged up front; any past them as they come
    try:
        for raw in gen:
            n += 1
            _check_frame(n, info, limits)
            if n > info.frames:
                budget.charge(f"frame {n}", pixels=w * h)
            if len(raw) != w * h * 3:
                raise InputError("video frame size differs from its header", 400, "corrupt_video")
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


def _check_frame(n: int, info: VideoInfo, limits: Limits) -> None:
    if n > limits.max_video_frames:
        raise InputError(
            f"video has more than {limits.max_video_frames} frames", 413, "video_too_many_frames"
        )
    if info.fps > 0 and n / info.fps > limits.max_video_seconds:
        raise InputError(
            f"video lasts more than {limits.max_video_seconds} s ({n} frames at {info.fps} fps)",
            413,
            "video_too_long",
        )


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


async def segment_video(state: ServingState, file: UploadFile, tmp: Path) -> FileResponse:
    """The video route's work: store the upload in `tmp`, check it, infer its frames batch by
    batch, answer a ZIP of frame PNGs and both H.264 videos (`tmp` is removed after sending)."""
    name = PurePosixPath(safe_filename(file.filename, "video.mp4").replace("\\", "/")).name
    head = await file.read(16)
    sniff_video(head, name)
    src = tmp / f"upload{Path(name).suffix.lower() or '.mp4'}"
    with src.open("wb") as out:
        out.write(head)
        while chunk := await file.read(1 << 20):
            out.write(chunk)
    engine = state.require_engine()
    budget = Budget(state.limits)
    info, batches = await run_in_threadpool(
        read_video, src, state.limits, engine.max_batch_size, budget
    )
    zip_path = tmp / "result.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        count = await _segment_frames(state, info, batches, zf, tmp)
        if count == 0:
            raise InputError("video holds no frames", 400, "corrupt_video")
        # Exactly two .mp4 members: the Streamlit view page pairs them by the word "predicted".
        zf.write(tmp / "original.mp4", "video/original.mp4")
        zf.write(tmp / "predicted.mp4", "video/predicted.mp4")
    return FileResponse(
        zip_path,
        media_type="application/zip",
        filename="video_predictions.zip",
        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True),
    )


async def _segment_frames(
    state: ServingState, info: Any, batches: Any, zf: zipfile.ZipFile, tmp: Path
) -> int:
    """Infer every batch of frames; write the frame PNGs and both H.264 videos. Returns the count."""
    colors = state.require_engine().spec.colors
    size, index = (info.width, info.height), 0
    try:
        writers = await run_in_threadpool(
            lambda: (
                VideoWriter(tmp / "original.mp4", size, info.fps),
                VideoWriter(tmp / "predicted.mp4", size, info.fps),
            )
        )
    except (OSError, RuntimeError, ValueError) as e:
        raise InputError(
            f"cannot encode this video ({_first_line(e)})", 422, "video_encode"
        ) from None
    try:
        while (frames := await run_in_threadpool(next, batches, None)) is not None:
            preds = await state.infer(frames)

            def write(frames=frames, preds=preds, start=index) -> None:
                for i, (frame, pred) in enumerate(zip(frames, preds, strict=True), start):
                    zf.writestr(f"frames/frame_{i:05d}.png", encode_png(frame))
                    zf.writestr(f"pred_mask/frame_{i:05d}.png", encode_png(pred.mask))
                    zf.writestr(
                        f"pred_color/frame_{i:05d}.png", encode_png(colorize(pred.mask, colors))
                    )
                    writers[0].write(frame)
                    writers[1].write(overlay(frame, pred.mask, colors, state.overlay_alpha))

            await run_in_threadpool(write)
            index += len(frames)
    except (OSError, RuntimeError, BrokenPipeError) as e:  # the encoder refused or died
        raise InputError(
            f"cannot encode this video ({_first_line(e)})", 422, "video_encode"
        ) from None
    finally:
        await run_in_threadpool(lambda: [_close_quietly(w) for w in writers])
    return index


def _close_quietly(writer: VideoWriter) -> None:
    with contextlib.suppress(Exception):  # the encoder already failed; the request says so
        writer.close()


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]
