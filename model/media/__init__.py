"""Media in and out: image and audio decoding, segment encoding and concatenation."""

from model.media.audio import DecodedAudio, decode_audio, with_lead_in
from model.media.image import choose_bucket, decode_image, fit_to_bucket
from model.media.mp4 import EncodingOptions, SegmentEncoder, concatenate_segments, output_audio_track

__all__ = [
    "DecodedAudio",
    "EncodingOptions",
    "SegmentEncoder",
    "choose_bucket",
    "concatenate_segments",
    "decode_audio",
    "decode_image",
    "fit_to_bucket",
    "output_audio_track",
    "with_lead_in",
]
