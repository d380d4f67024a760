"""MP4 video through PyAV: encode episodes, remux (concatenate and split) without re-encoding,
and decode frames by timestamp with keyframe seeks.

Encoding follows lerobot (yuv420p, a keyframe every 2 frames, crf 30) so datasets we write
decode the same way in lerobot. Decoding picks the frame whose pts is closest to the requested
time and refuses one further than `tolerance_s` away, as lerobot does.
"""

from __future__ import annotations

import fractions
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

DEFAULT_CODEC = "libx264"
DEFAULT_TOLERANCE_S = 1e-4


class VideoError(ValueError):
    """A video file that is missing, truncated or unreadable."""


class FrameTimestampError(VideoError):
    """No frame lies within the tolerance of a requested timestamp."""


@dataclass(frozen=True)
class Segment:
    """One episode's span of one camera: a file and [from_s, to_s) seconds inside it."""

    path: Path
    from_s: float
    to_s: float


def _encoder_options(codec: str, gop: int, crf: int) -> dict[str, str]:
    options = {"g": str(gop), "crf": str(crf)}
    if codec in ("libx264", "h264"):
        # No B-frames and IDR keyframes: every keyframe starts a cleanly cuttable segment.
        options.update({"bf": "0", "forced-idr": "1"})
        # The same frames give the same bytes. x264's AVX-512 macroblock-tree code lets memory it
        # never wrote (whatever the process freed there before) change the quantizers of the bottom
        # macroblock rows, so a generated dataset's videos differed from run to run in ~1 run of 4.
        # cpu-independent runs that code in C: the same bytes on every CPU, at the same speed.
        options["x264-params"] = "cpu-independent=1"
    if codec == "libsvtav1":
        options["preset"] = "12"
    return options


def encode(path: Path, frames: np.ndarray, fps: int, codec: str = DEFAULT_CODEC, gop: int = 2, crf: int = 30) -> None:
    """Write uint8 RGB frames (T, H, W, 3) as an mp4 whose frame k has pts k/fps."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise VideoError(f"{path}: cannot encode an empty episode")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=_encoder_options(codec, gop, crf))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        time_base = fractions.Fraction(1, fps)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise VideoError(f"{path}: video file is missing")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise VideoError(f"{path}: cannot open video ({err})") from err
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    return container


def probe(path: Path) -> dict:
    """The `info` block lerobot stores for a video feature, read from the file."""
    with _open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        return {
            "video.height": ctx.height,
            "video.width": ctx.width,
            "video.codec": ctx.codec.canonical_name,  # "av1" whichever decoder (libdav1d) opened it
            "video.pix_fmt": ctx.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(round(float(stream.average_rate or stream.guessed_rate))),
            "video.channels": 3,
            "has_audio": bool(container.streams.audio),
        }


def duration_s(path: Path) -> float:
    """Duration of the video stream in seconds (what lerobot uses to chain v3.0 offsets)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.duration is None:
            raise VideoError(f"{path}: video stream has no duration (truncated file?)")
        return float(stream.duration * stream.time_base)


def frame_times(path: Path) -> np.ndarray:
    """Sorted presentation times in seconds of the file's video packets, without decoding."""
    with _open(path) as container:
        stream = container.streams.video[0]
        try:
            pts = [p.pts for p in container.demux(stream) if p.size and p.pts is not None]
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: corrupt video data ({err})") from err
        return np.sort(np.asarray(pts, np.int64)) * float(stream.time_base)


def _signature(stream: av.video.stream.VideoStream) -> tuple[Any, ...]:
    """What must match for packets of one stream to be remuxed into a file made from another."""
    ctx = stream.codec_context
    return ctx.name, ctx.width, ctx.height, ctx.pix_fmt, bytes(ctx.extradata or b""), stream.time_base


class Concatenator:
    """Append whole episode files or segments to one mp4 by remuxing packets (no re-encode)."""

    def __init__(self, path: Path):
        self.path = path
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self._extradata: bytes | None = None
        self._offset = 0  # in the output stream's time base units
        self._bytes = 0  # of the packets muxed so far
        self._time_base: fractions.Fraction | None = None
        self._signature: tuple[Any, ...] | None = None  # of the stream the file was made from

    @property
    def seconds(self) -> float:
        """Where the next appended segment will start, in seconds."""
        return float(self._offset * self._time_base) if self._time_base else 0.0

    def size_bytes(self) -> int:
        """Bytes of video data muxed so far (the file on disk lags behind by the muxer's buffer)."""
        return self._bytes

    def accepts(self, signature: tuple[Any, ...]) -> bool:
        """Whether a stream of this `signature` (`remux_info`) can be remuxed into this file."""
        return self._container is None or signature == self._signature

    def append(self, src: Path, from_s: float = 0.0, to_s: float | None = None) -> tuple[float, float]:
        """Copy the packets of `src` with pts in [from_s, to_s); returns the span in this file."""
        with _open(src) as inp:
            ist = inp.streams.video[0]
            tb = ist.time_base
            if self._container is not None and _signature(ist) != self._signature:
                raise VideoError(f"{src}: codec, size, pixel format or time base differ from {self.path}'s; "
                                 "its packets cannot be remuxed into that file")  # fmt: skip
            lo = int(round(from_s / tb))
            hi = None if to_s is None else int(round(to_s / tb))
            slack = max(1, int(DEFAULT_TOLERANCE_S / tb))
            if lo > 0:
                inp.seek(lo, stream=ist, backward=True, any_frame=False)
            start, end, first = self._offset, self._offset, True
            shift = self._offset - lo
            for packet in inp.demux(ist):
                if packet.pts is None or packet.pts < lo - slack:
                    continue
                if hi is not None and packet.pts >= hi - slack:
                    if packet.dts is not None and packet.dts >= hi:
                        break
                    continue
                if first and not packet.is_keyframe:
                    raise VideoError(f"{src}: segment at {from_s:.4f}s does not start on a keyframe")
                if self._container is None:  # opened at the first packet: a refused segment leaves no file
                    self._open_output(ist)
                first = False
                end = max(end, packet.pts + shift + (packet.duration or 0))
                packet.pts += shift
                packet.dts = (packet.dts + shift) if packet.dts is not None else packet.pts
                packet.stream = self._stream
                self._bytes += packet.size
                self._container.mux(packet)
            if first:
                raise VideoError(f"{src}: no frames in [{from_s}, {to_s})")
            span_end = end if hi is None else self._offset + (hi - lo)
            if end < span_end - slack:
                raise VideoError(
                    f"{src}: frames end at {float((end - shift) * tb):.4f}s, short of the segment"
                    f" [{from_s:.4f}, {to_s:.4f})s (video shorter than its episode?)"
                )
            self._offset = span_end
        return float(start * self._time_base), float(span_end * self._time_base)

    def _open_output(self, template: av.video.stream.VideoStream) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w")
        self._stream = self._container.add_stream_from_template(template, opaque=True)
        self._time_base = template.time_base
        self._signature = _signature(template)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst`, copying when the filesystem refuses links."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copyfile(src, dst)


def remux_info(src: Path, from_s: float = 0.0) -> tuple[tuple[Any, ...], bool]:
    """In one open: the video stream's signature (what a file it is remuxed into must share) and whether its first
    packet at or after `from_s` is a keyframe (else the segment cannot be remuxed, only re-encoded)."""
    with _open(src) as inp:
        ist = inp.streams.video[0]
        lo = int(round(from_s / ist.time_base))
        slack = max(1, int(DEFAULT_TOLERANCE_S / ist.time_base))
        if lo > 0:
            inp.seek(lo, stream=ist, backward=True, any_frame=False)
        keyframe = next((bool(p.is_keyframe) for p in inp.demux(ist) if p.pts is not None and p.pts >= lo - slack), False)
        return _signature(ist), keyframe


def reencode(src: Path, from_s: float, to_s: float, dst: Path, fps: int, codec: str = DEFAULT_CODEC) -> None:
    """Decode [from_s, to_s) of `src` and encode it as its own file starting at pts 0."""
    n = int(round((to_s - from_s) * fps))
    reader = VideoReader(src)
    try:
        frames = reader.frames_at([from_s + k / fps for k in range(n)])
    finally:
        reader.close()
    encode(dst, frames, fps, codec)


def cut(src: Path, from_s: float, to_s: float, dst: Path, fps: int, codec: str = DEFAULT_CODEC) -> None:
    """Write [from_s, to_s) of `src` as its own file starting at pts 0: remuxed when the span starts on a
    keyframe, else decoded and re-encoded."""
    if not remux_info(src, from_s)[1]:
        reencode(src, from_s, to_s, dst, fps, codec)
        return
    concat = Concatenator(dst)
    try:
        concat.append(src, from_s, to_s)
    finally:
        concat.close()


class VideoReader:
    """Decode frames by timestamp from one file, keeping the container open between calls.

    A request behind the decoder, or far ahead of it, seeks; a request just ahead continues
    decoding, so sequential reads never seek. A seek goes straight to the keyframe of the target
    frame, found in the container's sample index (the mp4 `stss`/`stts` tables, read once), so a
    random read decodes only that keyframe and the frames between it and the target. Without an
    index, or when the index disagrees with the decoded timestamps, it falls back to a
    conservative seek before `ts - tolerance_s`.

    Decoders never hold frames back (a seek would then cost extra decodes). The AV1 decoder
    (dav1d) gets `threads` worker threads with a frame delay of 1, splitting one frame among
    them; at 640x480 (one tile) that gained no time on a quiet machine for 10% more CPU, hence
    the default of 1 (read several files at once instead: `Dataset.frames_of`). Other decoders
    run single-threaded: their frame threads would delay output by a frame per thread.
    """

    def __init__(self, path: Path, tolerance_s: float = DEFAULT_TOLERANCE_S, threads: int = 1):
        self.path = Path(path)
        self.tolerance_s = tolerance_s
        self._container = _open(self.path)
        self._stream = self._container.streams.video[0]
        ctx = self._stream.codec_context
        if ctx.name == "libdav1d":
            ctx.thread_count = max(int(threads), 1)
            ctx.options = {"max_frame_delay": "1"}
        else:
            ctx.thread_count = 1
        self._tb = float(self._stream.time_base)
        # Sample timestamps from the index and the positions of the keyframes among them.
        self._index_ts, self._keyframes = _index(self._stream)
        # One SwsContext per file, single-threaded: creating one per frame (what
        # `VideoFrame.to_ndarray` does) starts a thread pool each time.
        self._reformatter = av.video.reformatter.VideoReformatter()
        self._frames = None  # active decode iterator
        self._last: tuple[float, av.VideoFrame] | None = None  # the latest decoded frame
        self._seek_ahead_s = 1.0

    def close(self) -> None:
        self._container.close()

    def _position(self, ts: float) -> int:
        """Index of the last sample at or before the latest time a frame matching `ts` may have."""
        return max(int(np.searchsorted(self._index_ts, (ts + self.tolerance_s) / self._tb, side="right")) - 1, 0)

    def _keyframe_before(self, position: int) -> int:
        """Index of the last keyframe sample at or before sample `position`."""
        return int(self._keyframes[max(int(np.searchsorted(self._keyframes, position, side="right")) - 1, 0)])

    def _must_seek(self, ts: float, last_ts: float) -> bool:
        """Whether reaching `ts` from the frame at `last_ts` is cheaper by seeking than decoding on."""
        if ts < last_ts - self.tolerance_s:
            return True
        if self._keyframes is None:
            return ts > last_ts + self._seek_ahead_s
        # Decoding on passes every frame up to the target; a seek decodes from its keyframe.
        return self._keyframe_before(self._position(ts)) > self._position(last_ts) + 1

    def _restart(self, ts: float, exact: bool = True) -> None:
        offset = int(max(ts - self.tolerance_s, 0.0) / self._tb)
        if exact and self._keyframes is not None:
            offset = int(self._index_ts[self._keyframe_before(self._position(ts))])
        self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._last = None

    def _next(self) -> tuple[float, av.VideoFrame] | None:
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except av.error.FFmpegError as err:
            raise VideoError(f"{self.path}: corrupt video data ({err})") from err
        return frame.pts * self._tb, frame

    def _decode_to(self, ts: float, best: tuple[float, av.VideoFrame] | None) -> tuple[float, av.VideoFrame] | None:
        """Decode forward until a frame at or past `ts - tolerance_s`; the one closest to `ts`."""
        while best is None or best[0] < ts - self.tolerance_s:
            item = self._next()
            if item is None:
                break
            if best is None or abs(item[0] - ts) <= abs(best[0] - ts):
                best = item
            self._last = item
        return best

    def _frame_at(self, ts: float) -> np.ndarray:
        last = self._last
        best = None
        if self._frames is None or last is None or self._must_seek(ts, last[0]):
            self._restart(ts)
            best = self._decode_to(ts, None)
            if best is None or best[0] > ts + self.tolerance_s:
                # The index pointed past the target (timestamps there are not the frames' pts).
                self._restart(ts, exact=False)
                best = self._decode_to(ts, None)
        else:
            best = self._decode_to(ts, last)
        if best is None or abs(best[0] - ts) >= self.tolerance_s:
            got = "no frame" if best is None else f"nearest frame at {best[0]:.6f}s"
            raise FrameTimestampError(f"{self.path}: no frame within {self.tolerance_s}s of {ts:.6f}s ({got})")
        rgb = self._reformatter.reformat(best[1], format="rgb24", threads=1)
        # A view of a new RGB frame, not a copy; copied only when the decoder's frame already was
        # RGB, so that no two calls share memory and callers may write to what they get.
        return rgb.to_ndarray() if rgb is not best[1] else rgb.to_ndarray().copy()

    def frames_at(self, timestamps: list[float] | np.ndarray) -> np.ndarray:
        """uint8 frames (N, H, W, 3) at the given times in seconds, in the order asked."""
        if len(timestamps) == 1:  # the data-loader case: skip the copy into a stacked array
            return self._frame_at(float(timestamps[0]))[None]
        order = np.argsort(timestamps, kind="stable")
        out: list[np.ndarray | None] = [None] * len(order)
        for i in order:
            out[i] = self._frame_at(float(timestamps[i]))
        return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def _index(stream: av.video.stream.VideoStream) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample timestamps of the container's index (read without decoding) and the positions of
    the keyframes among them; keyframes None when the index is empty or unordered.

    These are decode timestamps; with reordered frames they may differ from the pts, which
    `VideoReader` detects on the first decoded frame and then seeks conservatively.
    """
    try:
        entries = stream.index_entries
        ts = np.fromiter((e.timestamp for e in entries), np.int64, len(entries))
        key = np.fromiter((e.is_keyframe for e in entries), bool, len(entries))
    except (AttributeError, av.error.FFmpegError):
        return np.zeros(0, np.int64), None
    if not key.any() or (len(ts) > 1 and not (np.diff(ts) > 0).all()):
        return ts, None
    return ts, np.flatnonzero(key)
