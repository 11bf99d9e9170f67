"""Where the face is in the reference image, and a placeholder portrait when there is no image."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_FACE_FRACTION = 0.06  # ignore detections smaller than this share of the shorter side


@dataclass(frozen=True)
class FaceBox:
    """A face's square box in pixels: left, top and side length."""

    x: float
    y: float
    size: float

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.size / 2, self.y + self.size / 2

    @property
    def mouth(self) -> tuple[float, float]:
        """Mouth centre: horizontally centred, about three quarters down a frontal face box."""
        return self.x + self.size / 2, self.y + self.size * 0.77


def find_face(image: np.ndarray) -> FaceBox:
    """The largest frontal face (OpenCV's Haar cascade); a centred guess when none is found."""
    height, width = image.shape[:2]
    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    detector = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    min_side = max(24, int(MIN_FACE_FRACTION * min(height, width)))
    faces = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    if len(faces) == 0:
        size = 0.4 * min(height, width)
        return FaceBox(x=(width - size) / 2, y=0.38 * height - size / 2, size=size)
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
    return FaceBox(x=float(x), y=float(y), size=float(max(w, h)))


def placeholder_portrait(height: int, width: int, seed: int) -> tuple[np.ndarray, FaceBox]:
    """A simple drawn face on a soft gradient, for requests without an image: (H, W, 3) uint8 and its box."""
    rng = np.random.default_rng(seed)
    top, bottom = rng.uniform(150, 230, 3), rng.uniform(60, 140, 3)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    image = np.ascontiguousarray(np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).astype(np.uint8))
    side = min(height, width)
    cx, cy = width // 2, int(height * 0.45)
    skin = tuple(int(v) for v in rng.choice([(224, 188, 160), (198, 150, 118), (141, 98, 70), (236, 205, 180)]))
    hair = tuple(int(v) for v in rng.uniform(20, 90, 3))
    cv2.ellipse(image, (cx, cy + int(0.40 * side)), (int(0.30 * side), int(0.16 * side)), 0, 180, 360, hair, -1, cv2.LINE_AA)
    cv2.ellipse(image, (cx, cy), (int(0.17 * side), int(0.22 * side)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    cv2.ellipse(image, (cx, cy - int(0.08 * side)), (int(0.18 * side), int(0.16 * side)), 0, 180, 360, hair, -1, cv2.LINE_AA)
    for dx in (-1, 1):
        eye = (cx + dx * int(0.065 * side), cy - int(0.02 * side))
        cv2.ellipse(image, eye, (int(0.025 * side), int(0.013 * side)), 0, 0, 360, (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(image, eye, max(1, int(0.01 * side)), (40, 30, 30), -1, cv2.LINE_AA)
    cv2.ellipse(image, (cx, cy + int(0.115 * side)), (int(0.05 * side), int(0.008 * side)), 0, 0, 360, (150, 70, 70), -1, cv2.LINE_AA)
    face_side = 0.44 * side
    return image, FaceBox(x=cx - face_side / 2, y=cy - 0.22 * side, size=face_side)
