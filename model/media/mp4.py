"""Video out: every segment as a standalone fragmented MP4 (H.264 yuv420p + AAC), and their concatenation.

The AAC track of a request is ONE continuous encode of the output audio; each segment carries the packets
that start inside its time range, at their exact offset from the segment's start. So a segment plays on
its own (ftyp + moov + moof/mdat, timestamps from 0), a browser can append segments to one Media Source
buffer, and concatenating them by copying packets gives gapless audio: independent per-segment AAC encodes
would each add an encoder-priming gap at every boundary.
"""

from __future__ import annotations

import io
import tempfile
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

from model.media.audio import DecodedAudio, with_lead_in

if TYPE_CHECKING:
    from model.plan import SegmentPlan, SegmentSpec

SILENT_TRACK_RATE = 48000
# Fragmented MP4 for Media Source Extensions: moov first, one fragment per keyframe, and `frag_discont` +
# `use_editlist` so a track's first sample keeps its exact start time in tfdt instead of being moved to 0.
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof+frag_discont", "use_editlist": "1"}


@dataclass(frozen=True)
class EncodingOptions:
    """Codec settings for the segments (configurable in serve_config.yaml)."""

    crf: int = 20  # H.264 constant rate factor: lower is better and larger
    preset: str = "veryfast"  # x264 speed/size trade-off
    audio_bitrate: int = 128_000


def output_audio_track(audio: DecodedAudio | None, plan: SegmentPlan) -> tuple[np.ndarray, int]:
    """The audio of the output video, (channels, n) float32, and its rate.

    Silence for the reference frame and the lead-in, the speech, then silence to the last frame's end
    (frame g is shown at g / fps and is driven by the audio at that time).
    """
    if audio is None:
        rate, track = SILENT_TRACK_RATE, np.zeros((1, 0), np.float32)
    else:
        rate, track = audio.playback_rate, with_lead_in(audio.playback, plan.audio_offset_s, audio.playback_rate)
    length = plan.num_frames * rate // plan.fps
    if track.shape[1] < length:
        track = np.pad(track, ((0, 0), (0, length - track.shape[1])))
    return np.ascontiguousarray(track[:, :length]), rate


class AacStream:
    """One continuous AAC encode of a track, handed out in time order as packets are needed."""

    def __init__(self, track: np.ndarray, rate: int, bitrate: int) -> None:
        self.rate = rate
        self.layout = "mono" if track.shape[0] == 1 else "stereo"
        self._codec = av.CodecContext.create("aac", "w")
        self._codec.sample_rate = rate
        self._codec.layout = self.layout
        self._codec.format = "fltp"
        self._codec.bit_rate = bitrate
        self._codec.time_base = Fraction(1, rate)
        self._codec.open()
        self._track = track
        self._fed = 0
        self._flushed = False
        self._pending: deque[av.Packet] = deque()

    @property
    def extradata(self) -> bytes | None:
        return self._codec.extradata

    def take_until(self, end_sample: int | None) -> list[av.Packet]:
        """Packets that start in [0, end_sample), in order; None takes all that remain."""
        while not self._flushed and (end_sample is None or not self._pending or self._pending[-1].pts < end_sample):
            self._feed_one_frame()
        taken = []
        while self._pending and (end_sample is None or self._pending[0].pts < end_sample):
            packet = self._pending.popleft()
            if packet.pts >= 0:  # the priming packet lies before the track (which starts with silence)
                taken.append(packet)
        return taken

    def _feed_one_frame(self) -> None:
        if self._fed >= self._track.shape[1]:
            self._pending.extend(self._codec.encode(None))
            self._flushed = True
            return
        chunk = self._track[:, self._fed : self._fed + self._codec.frame_size]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=self.layout)
        frame.sample_rate = self.rate
        frame.pts = self._fed
        self._fed += chunk.shape[1]
        self._pending.extend(self._codec.encode(frame))


class SegmentEncoder:
    """Encodes one request's segments, in order, into standalone fragmented MP4s."""

    def __init__(self, plan: SegmentPlan, audio: DecodedAudio | None, options: EncodingOptions) -> None:
        self.plan = plan
        self.options = options
        self.codecs = ""  # the RFC 6381 codecs string, e.g. 'avc1.64001f,mp4a.40.2', known after a first encode
        track, rate = output_audio_track(audio, plan)
        self._aac = AacStream(track, rate, options.audio_bitrate)

    def encode(self, spec: SegmentSpec, frames: np.ndarray) -> bytes:
        """(n, H, W, 3) uint8 frames of segment `spec` -> MP4 bytes with this segment's audio."""
        if frames.shape != (spec.num_frames, self.plan.height, self.plan.width, 3) or frames.dtype != np.uint8:
            raise ValueError(
                f"segment {spec.index}: expected frames of shape {(spec.num_frames, self.plan.height, self.plan.width, 3)}"
                f" uint8, got {frames.shape} {frames.dtype}"
            )
        rate, fps = self._aac.rate, self.plan.fps
        is_last = spec.index == self.plan.num_segments - 1
        audio_packets = self._aac.take_until(None if is_last else spec.end_frame * rate // fps)
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mp4", options=FRAGMENTED_MP4) as out:
            video = out.add_stream(
                "libx264",
                rate=fps,
                options={"crf": str(self.options.crf), "preset": self.options.preset, "bf": "0", "g": str(len(frames))},
            )
            video.width, video.height, video.pix_fmt = self.plan.width, self.plan.height, "yuv420p"
            audio = out.add_stream("aac", rate=rate)
            audio.layout = self._aac.layout
            audio.codec_context.extradata = self._aac.extradata
            packets = list(self._video_packets(video, frames))
            self.codecs = f"{avc_codec_string(video.codec_context.extradata)},mp4a.40.2"  # AAC-LC
            packets += self._rebased(audio_packets, audio, spec.start_frame * rate // fps)
            for packet in sorted(packets, key=lambda p: p.dts * p.time_base):
                out.mux(packet)
        return buffer.getvalue()

    @staticmethod
    def _video_packets(stream: av.VideoStream, frames: np.ndarray) -> Iterable[av.Packet]:
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            yield from stream.encode(frame)
        yield from stream.encode(None)

    @staticmethod
    def _rebased(packets: list[av.Packet], stream: av.AudioStream, start_sample: int) -> list[av.Packet]:
        rebased = []
        for packet in packets:
            copy = av.Packet(bytes(packet))
            copy.pts = copy.dts = packet.pts - start_sample
            copy.duration = packet.duration
            copy.time_base = packet.time_base
            copy.stream = stream
            rebased.append(copy)
        return rebased


def avc_codec_string(extradata: bytes) -> str:
    """'avc1.PPCCLL' (profile, constraint flags, level) from H.264 extradata, avcC or Annex B."""
    if extradata[:1] == b"\x01":  # avcC: version, profile, constraints, level
        return f"avc1.{extradata[1:4].hex()}"
    for start in range(len(extradata) - 4):  # Annex B: find the SPS (NAL type 7) after a start code
        if extradata[start : start + 3] == b"\x00\x00\x01" and extradata[start + 3] & 0x1F == 7:
            return f"avc1.{extradata[start + 4 : start + 7].hex()}"
    raise ValueError("no H.264 sequence parameter set in the encoder's extradata")


def concatenate_segments(segments: Iterable[bytes]) -> bytes:
    """One MP4 (moov first) from segment MP4s, by copying packets: no re-encode, frames unchanged.

    Each segment's packets are shifted to where the segment starts, i.e. after the video of the ones
    before it; its audio packets are a continuation of one AAC stream, so the audio joins gaplessly.
    """
    with tempfile.NamedTemporaryFile(suffix=".mp4") as file:  # faststart rewrites the file: needs a real one
        _concatenate_into(file.name, segments)
        return Path(file.name).read_bytes()


def _concatenate_into(path: str, segments: Iterable[bytes]) -> None:
    with av.open(path, "w", format="mp4", options={"movflags": "faststart"}) as out:
        outputs: dict[str, av.stream.Stream] = {}
        start_s = Fraction(0)
        for data in segments:
            with av.open(io.BytesIO(data)) as src:
                if not outputs:
                    outputs = {s.type: out.add_stream_from_template(s) for s in src.streams if s.type in ("video", "audio")}
                fps = src.streams.video[0].average_rate
                video_frames = 0
                for packet in src.demux():
                    if packet.dts is None or packet.stream.type not in outputs:
                        continue  # demuxer flush packets
                    shift = int(start_s / packet.time_base)
                    packet.pts += shift
                    packet.dts += shift
                    video_frames += packet.stream.type == "video"
                    packet.stream = outputs[packet.stream.type]
                    out.mux(packet)
                start_s += video_frames / Fraction(fps)
