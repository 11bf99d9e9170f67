"""Lossless joining of the streamed segment MP4s into one MP4: packets are copied, never re-encoded.

Each segment holds its own frames and the packets of ONE continuous AAC encode that start in its time
range, with timestamps from 0 (docs/protocol.md, Segments). Shifting every packet of a segment by where the
segment starts (the summed video durations of the segments before it) gives the whole video, with the
audio gapless and in sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av

from client.files import atomic_output

MEDIA_TYPES = ("video", "audio")


def concatenate(segments: Sequence[Path], output: Path) -> None:
    """Write the segments, in order, as one MP4 at `output` (moov first, so it plays while downloading).

    The file is written beside `output` under a temporary name and renamed, so `output` is always whole.
    """
    if not segments:
        raise ValueError("no segments to concatenate")
    with atomic_output(output) as temp:
        _concatenate_into(segments, str(temp))  # faststart rewrites the file: it needs a real file, not BytesIO


def _concatenate_into(segments: Sequence[Path], path: str) -> None:
    with av.open(path, "w", format="mp4", options={"movflags": "faststart"}) as out:
        outputs: dict[str, av.stream.Stream] = {}
        start_s = Fraction(0)  # where the current segment starts in the whole video
        for segment in segments:
            with av.open(str(segment)) as src:
                if not outputs:
                    outputs = {s.type: out.add_stream_from_template(s) for s in src.streams if s.type in MEDIA_TYPES}
                video_end_s = Fraction(0)
                for packet in src.demux():
                    if packet.dts is None or packet.stream.type not in outputs:
                        continue  # the demuxer's empty flush packets, or a stream the first segment lacked
                    shift = int(start_s / packet.time_base)
                    if packet.stream.type == "video":
                        video_end_s = max(video_end_s, (packet.pts + packet.duration) * packet.time_base)
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = outputs[packet.stream.type]
                    out.mux(packet)
                start_s += video_end_s
