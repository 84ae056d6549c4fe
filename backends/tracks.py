"""Platform-neutral video tracking types: what a tracker saw, and the keyframes that draw it.

Frame numbers are 1-based, as Label Studio counts them: frame n is the picture a browser shows
at time (n - 1) / framerate (see `labelpilot.backends.video`).
"""

from __future__ import annotations

from dataclasses import dataclass

from labelpilot.backends.shapes import BBox


@dataclass(frozen=True, slots=True)
class TrackBox:
    """Where the tracker saw the object on one frame (pixels), and how sure the detector was."""

    frame: int
    box: BBox
    score: float = 1.0


@dataclass(frozen=True)
class Track:
    """One object through a video: its boxes on the frames where it was seen, by frame.

    A gap in the frame numbers is a stretch where the tracker lost the object."""

    track_id: int
    class_name: str
    boxes: tuple[TrackBox, ...]

    @property
    def score(self) -> float:
        return sum(b.score for b in self.boxes) / len(self.boxes) if self.boxes else 0.0

    @property
    def first_frame(self) -> int:
        return self.boxes[0].frame

    @property
    def last_frame(self) -> int:
        return self.boxes[-1].frame


@dataclass(frozen=True, slots=True)
class Keyframe:
    """A keyframe as video editors store them: the box on this frame is drawn, boxes between
    two keyframes are interpolated linearly, and `enabled=False` ends the box after this frame
    (an enabled last keyframe keeps the box to the end of the video)."""

    frame: int
    box: BBox
    enabled: bool = True
