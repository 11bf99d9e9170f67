"""Frame synthesis for the preview: a mouth that opens with the speech's loudness and a gently moving head.

Everything is a pure function of (reference image, face box, audio, seed, frame index), so any frame can be
rendered on its own and a seed always gives the same video.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from model.preview.face import FaceBox

MOUTH_COLOR = np.array([52, 18, 22], np.float32)  # the dark inside of an open mouth, RGB


@dataclass(frozen=True)
class AnimationStyle:
    """How strongly the preview moves (the `options` of configs/preview.yaml)."""

    mouth_open: float = 0.11  # widest opening, as a fraction of the face box
    head_turn_deg: float = 1.6  # amplitude of the slow head rotation
    head_shift: float = 0.025  # amplitude of the slow head drift, as a fraction of the face box
    nod: float = 0.03  # downward nod with loudness, as a fraction of the face box


def loudness_envelope(samples: np.ndarray, num_frames: int, sample_rate: int, fps: int) -> np.ndarray:
    """Per output frame, how open the mouth should be, in [0, 1].

    `samples` is the model's audio input with its lead-in. Frame g >= 1 is driven by the audio from
    (g - 1) / fps, as OmniAvatar's audio row g - 1 drives frame g; frame 0 is the reference.
    """
    hop = sample_rate // fps
    voiced = np.zeros((num_frames - 1) * hop, np.float32)
    voiced[: min(len(samples), len(voiced))] = samples[: len(voiced)]
    rms = np.sqrt(np.mean(voiced.reshape(num_frames - 1, hop) ** 2, axis=1)) if num_frames > 1 else np.zeros(0)
    level_db = 20 * np.log10(rms + 1e-5)
    peak_db = np.percentile(level_db, 95) if len(level_db) else -100.0
    level = np.clip((level_db - (peak_db - 30.0)) / 30.0, 0.0, 1.0) if peak_db > -60 else np.zeros_like(level_db)
    envelope = np.zeros(num_frames, np.float32)
    for g, value in enumerate(level, start=1):  # fast opening, slower closing, like a jaw
        envelope[g] = max(value, 0.55 * envelope[g - 1])
    return envelope


class HeadMotion:
    """Slow, seeded head rotation and drift: sums of low-frequency sines with random phases."""

    def __init__(self, seed: int, fps: int) -> None:
        rng = np.random.default_rng(seed)
        self.fps = fps
        self.freqs = rng.uniform(0.08, 0.45, (3, 3))  # (parameter: turn, x, y; component)
        self.phases = rng.uniform(0, 2 * np.pi, (3, 3))

    def at(self, frame: int) -> np.ndarray:
        """(turn, x, y), each in [-1, 1], at an output frame."""
        t = frame / self.fps
        return np.sin(2 * np.pi * self.freqs * t + self.phases).mean(axis=1)


class Animator:
    """Renders output frame g from the reference image."""

    def __init__(self, image: np.ndarray, face: FaceBox, envelope: np.ndarray, seed: int, fps: int, style: AnimationStyle):
        self.image = image
        self.face = face
        self.envelope = envelope
        self.motion = HeadMotion(seed, fps)
        self.style = style
        height, width = image.shape[:2]
        cx, cy = face.center
        reach = 1.7 * face.size
        self.x0, self.y0 = max(0, int(cx - reach)), max(0, int(cy - reach))
        self.x1, self.y1 = min(width, int(cx + reach)), min(height, int(cy + 1.3 * reach))
        ys, xs = np.mgrid[self.y0 : self.y1, self.x0 : self.x1].astype(np.float32)
        self.local_x, self.local_y = xs - self.x0, ys - self.y0  # remap coordinates inside the region
        pivot_x, pivot_y = cx, cy + 0.6 * face.size  # the neck
        self.rx, self.ry = xs - pivot_x, ys - pivot_y
        taper = _edge_taper(self.y1 - self.y0, self.x1 - self.x0)
        self.head_weight = np.exp(-(((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * (0.95 * face.size) ** 2))) * taper
        mx, my = face.mouth
        across = np.exp(-(((xs - mx) / (0.2 * face.size)) ** 2)) * taper
        below = np.where(ys >= my, np.exp(-(((ys - my) / (0.32 * face.size)) ** 2)), 0.0)
        above = np.where(ys < my, np.exp(-(((ys - my) / (0.1 * face.size)) ** 2)), 0.0)
        self.jaw = (across * (below - 0.3 * above)).astype(np.float32)  # the jaw drops, the upper lip lifts a little

    def render(self, frame: int) -> np.ndarray:
        """(H, W, 3) uint8. Frame 0 is the reference image itself."""
        out = self.image.copy()
        if frame == 0:
            return out
        openness = float(self.envelope[min(frame, len(self.envelope) - 1)])
        size = self.face.size
        turn, drift_x, drift_y = self.motion.at(frame)
        angle = np.deg2rad(self.style.head_turn_deg * turn)
        shift = size * np.array([self.style.head_shift * drift_x, self.style.head_shift * drift_y + self.style.nod * openness])
        # head: rotate about the neck and drift, fading out away from the face; mouth: open by `gap` px
        cos_minus_1, sin = np.float32(np.cos(angle) - 1.0), np.float32(np.sin(angle))
        gap = self.style.mouth_open * size * openness
        dx = self.head_weight * (cos_minus_1 * self.rx - sin * self.ry + np.float32(shift[0]))
        dy = self.head_weight * (sin * self.rx + cos_minus_1 * self.ry + np.float32(shift[1])) + np.float32(gap) * self.jaw
        roi = self.image[self.y0 : self.y1, self.x0 : self.x1]
        warped = cv2.remap(roi, self.local_x - dx, self.local_y - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if gap >= 1.0:
            self._paint_mouth(warped, gap, openness, dx, dy)
        out[self.y0 : self.y1, self.x0 : self.x1] = warped
        return out

    def _paint_mouth(self, roi: np.ndarray, gap: float, openness: float, dx: np.ndarray, dy: np.ndarray) -> None:
        """A soft dark ellipse in the opened gap, composited only in a window around the mouth."""
        mx, my = self.face.mouth
        row = min(max(int(my - self.y0), 0), roi.shape[0] - 1)
        col = min(max(int(mx - self.x0), 0), roi.shape[1] - 1)
        center_x = mx - self.x0 + float(dx[row, col])
        center_y = my - self.y0 + float(dy[row, col]) + 0.35 * gap
        half_w, half_h = 0.16 * self.face.size * (0.65 + 0.35 * openness), 0.5 * gap
        blur = max(0.6, 0.15 * gap)
        pad = int(3 * blur) + 2
        left, right = max(0, int(center_x - half_w) - pad), min(roi.shape[1], int(center_x + half_w) + pad + 1)
        top, bottom = max(0, int(center_y - half_h) - pad), min(roi.shape[0], int(center_y + half_h) + pad + 1)
        if right <= left or bottom <= top:
            return
        mask = np.zeros((bottom - top, right - left), np.float32)
        center = (round(center_x) - left, round(center_y) - top)
        cv2.ellipse(mask, center, (max(1, round(half_w)), max(1, round(half_h))), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
        mask = cv2.GaussianBlur(mask, (0, 0), blur)[..., None] * min(1.0, gap / 3.0)
        window = roi[top:bottom, left:right]
        window[:] = (window * (1 - mask) + MOUTH_COLOR * mask).astype(np.uint8)


def _edge_taper(height: int, width: int, margin: float = 0.15) -> np.ndarray:
    """1 inside, falling smoothly to 0 at the region's border, so warps leave no seam."""
    def ramp(n: int) -> np.ndarray:
        t = np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5) / max(1.0, margin * n)
        return np.clip(t, 0.0, 1.0) ** 2 * (3 - 2 * np.clip(t, 0.0, 1.0))
    return (ramp(height)[:, None] * ramp(width)[None, :]).astype(np.float32)
