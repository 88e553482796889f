"""Frame sources: where the unit's grey camera frames come from.

A `FrameSource` hands out one frame per `read()` (a 2-D uint8 grey array, H×W) and
None when there are no more. Two are built in:

* `Picamera2Source`: the Pi's camera through picamera2. The camera gives the decoder
  the Y (luma) plane of a YUV420 stream, which is already the grey image: no colour
  conversion runs on the Pi's CPU at 15 frames/s.
* `OpenCvSource`: a USB webcam through OpenCV, for units without a camera module
  (OpenCV is an optional extra, ``opencv-python-headless``, imported only here).
* `ImageFileSource`: image files and folders, for tests, the demo and benchmarks.

    >>> with ImageFileSource(["photos/"], loop=False) as frames:   # doctest: +SKIP
    ...     while (frame := frames.read()) is not None:
    ...         decoder.decode(frame)

Both are context managers; `close()` is idempotent and after it `read()` returns
None, so a frame loop that races a shutdown ends quietly instead of failing.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from doorscan.errors import DoorscanError
from doorscan.lifecycle import Closeable

if TYPE_CHECKING:
    from device.config import FramesConfig

__all__ = [
    "IMAGE_SUFFIXES",
    "FrameSource",
    "open_frames",
    "FrameSourceError",
    "ImageFileSource",
    "Picamera2Source",
    "Picamera2Like",
    "OpenCvSource",
    "AF_MODE_MANUAL",
    "AF_MODE_CONTINUOUS",
    "load_grey",
]

# libcamera's AfModeEnum values (controls.AfModeEnum.Manual / .Continuous). The numbers
# are libcamera's stable control ABI, so they are written here rather than importing
# libcamera (which, like picamera2, exists only on Raspberry Pi OS).
AF_MODE_MANUAL = 0
AF_MODE_CONTINUOUS = 2

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".pgm"})
"""What a folder given to `ImageFileSource` is read for (case-insensitive)."""


class FrameSourceError(DoorscanError, OSError):
    """A frame could not be had: an unreadable image file, or a camera that failed."""


class FrameSource(Protocol):
    """Where frames come from; implementations are context managers."""

    def read(self) -> np.ndarray | None:
        """The next frame (2-D uint8 grey, H×W), or None when there are no more."""
        ...

    def close(self) -> None:
        """Release the source; idempotent."""
        ...


def load_grey(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as a 2-D uint8 grey array; `FrameSourceError` naming the file if not."""
    try:
        with Image.open(path) as image:
            # convert() loads the pixels, so a truncated file fails here, inside the try.
            return np.array(image.convert("L"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # OSError covers a missing file, PIL's UnidentifiedImageError and truncation.
        raise FrameSourceError(f"cannot read image {os.fspath(path)}: {exc}") from exc


def _expand(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files.extend(
                sorted(
                    p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                )
            )
        elif path.exists():
            files.append(path)  # named explicitly: read whatever its suffix
        else:
            raise FrameSourceError(f"no such image file or folder: {path}")
    return files


class ImageFileSource(Closeable):
    """Frames from image files, in the order given; a folder gives its images sorted by name.

    Folders are listed once, when the source is made. An image that cannot be read
    raises `FrameSourceError` from `read()`; the next `read()` goes on with the
    following file. With ``loop=True`` the files start again after the last one.
    With `pace_fps`, `read()` hands out frames no faster than that, as a camera does
    (for measuring a unit at its real frame rate); without, as fast as asked.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        loop: bool = False,
        pace_fps: float | None = None,
    ) -> None:
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        self.files: list[Path] = _expand(paths)
        self.loop = loop
        self._period_s = 1.0 / pace_fps if pace_fps else 0.0
        self._due = time.monotonic()
        self._next = 0
        self._closed = False

    def read(self) -> np.ndarray | None:
        if self._closed or not self.files:
            return None
        if self._period_s:
            # Deadlines, not sleeps of one period: decoding time does not slow the rate,
            # and a slow frame is not followed by a burst to catch up.
            now = time.monotonic()
            if self._due > now:
                time.sleep(self._due - now)
            self._due = max(self._due, now) + self._period_s
        if self._next >= len(self.files):
            if not self.loop:
                return None
            self._next = 0
        path = self.files[self._next]
        self._next += 1
        return load_grey(path)

    def close(self) -> None:
        self._closed = True


def open_frames(frames: FramesConfig) -> FrameSource:
    """The frame source a config names (picamera2 is imported only here, lazily)."""
    if frames.source == "files":
        assert frames.path is not None  # the config validator guarantees it
        return ImageFileSource(
            [frames.path], loop=frames.loop, pace_fps=frames.fps if frames.pace else None
        )
    if frames.source == "opencv":
        return OpenCvSource(frames.device_index, frames.width, frames.height, frames.fps)
    return Picamera2Source(
        frames.width,
        frames.height,
        frames.fps,
        lens_position=frames.lens_position if frames.autofocus == "fixed" else None,
    )


class Picamera2Like(Protocol):
    """The part of picamera2's `Picamera2` this module uses (what a fake must mirror)."""

    @property
    def camera_controls(self) -> dict[str, Any]:
        """Control name -> (min, max, default) of what this camera supports."""
        ...

    def create_video_configuration(
        self, main: dict[str, Any], lores: dict[str, Any], controls: dict[str, Any], queue: bool
    ) -> Any: ...
    def configure(self, camera_config: Any) -> None: ...
    def start(self) -> None: ...
    def capture_array(self, name: str = "main") -> np.ndarray: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


def _picamera2() -> Picamera2Like:
    try:
        # Imported only when a real camera is wanted: picamera2 exists on Raspberry
        # Pi OS (apt install python3-picamera2) and nowhere else.
        from picamera2 import Picamera2
    except ImportError as exc:
        raise FrameSourceError(
            "picamera2 is not installed (on Raspberry Pi OS: apt install python3-picamera2);"
            " use frames.source = files to read images instead"
        ) from exc
    camera: Picamera2Like = Picamera2()
    return camera


class Picamera2Source(Closeable):
    """Grey frames from the Pi camera: the Y plane of picamera2's YUV420 "lores" stream.

    The camera is opened, configured and started when the source is made, so a
    missing or busy camera fails at start-up, not at the first visitor. ``queue=False``
    makes every `read()` wait for a fresh frame instead of handing out one that sat in
    a buffer while the last frame was decoded: the door judges what is in front of it
    now. Pass `camera_factory` (a callable returning a Picamera2-like object) to use
    another camera object; picamera2 itself is imported only when none is given.

    Focus: a camera with autofocus (Camera Module 3) refocuses continuously, since
    visitors hold cards and phones at any distance; with `lens_position` (dioptres,
    1 / distance in metres) the lens is held there instead, for a door where the
    card rests at a fixed distance and hunting focus would only cost frames. A camera
    without autofocus (Camera Module 2, no ``AfMode`` in its ``camera_controls``) is
    given no focus controls at all: libcamera would refuse them.
    """

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        *,
        lens_position: float | None = None,
        camera_factory: Callable[[], Picamera2Like] | None = None,
    ) -> None:
        self.width = width
        self.height = height
        self.fps = fps
        self.lens_position = lens_position
        self._lock = threading.Lock()  # close() from another thread waits for a read
        try:
            self._camera: Picamera2Like | None = (camera_factory or _picamera2)()
        except FrameSourceError:
            raise
        except Exception as exc:  # picamera2 raises RuntimeError for a missing or busy camera
            raise FrameSourceError(f"cannot open the camera: {exc}") from exc
        try:
            camera_config = self._camera.create_video_configuration(
                main={"size": (width, height)},
                # The lores stream is the decoder's: YUV420, whose first plane is grey.
                lores={"size": (width, height), "format": "YUV420"},
                controls=self._controls(self._camera),
                queue=False,
            )
            self._camera.configure(camera_config)
            self._camera.start()
        except Exception as exc:
            with contextlib.suppress(Exception):  # the start-up error is the one to report
                self.close()
            raise FrameSourceError(f"the camera did not start: {exc}") from exc

    def _controls(self, camera: Picamera2Like) -> dict[str, Any]:
        controls: dict[str, Any] = {"FrameRate": self.fps}
        if "AfMode" not in camera.camera_controls:
            return controls  # a fixed-focus module; lens_position has nothing to move
        if self.lens_position is None:
            controls["AfMode"] = AF_MODE_CONTINUOUS
        else:
            controls["AfMode"] = AF_MODE_MANUAL
            controls["LensPosition"] = self.lens_position
        return controls

    def read(self) -> np.ndarray | None:
        with self._lock:
            if self._camera is None:
                return None
            try:
                yuv420 = self._camera.capture_array("lores")
            except Exception as exc:
                raise FrameSourceError(f"the camera gave no frame: {exc}") from exc
        # Rows past `height` hold U and V; columns past `width` are stride padding.
        # A contiguous copy of the Y plane, as the decoders want, not a view that
        # would keep the whole YUV buffer alive.
        return np.array(yuv420[: self.height, : self.width], dtype=np.uint8, order="C")

    def close(self) -> None:
        """Stop and release the camera; idempotent."""
        with self._lock:
            camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            camera.stop()
        finally:
            camera.close()


def _cv2() -> Any:
    try:
        # Optional: only units with a USB webcam need OpenCV (a large wheel on a Pi).
        import cv2  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise FrameSourceError(
            "OpenCV is not installed (pip install opencv-python-headless);"
            " it is needed only for frames.source = opencv"
        ) from exc
    return cv2


class OpenCvSource(Closeable):
    """Grey frames from a USB webcam through OpenCV, for units without a camera module.

    A webcam gives BGR frames, so each one is converted to grey (`cv2.cvtColor`): this
    costs CPU that the Pi camera's Y plane does not. The size and rate are asked for
    and the webcam picks the nearest it has; the decoder takes whatever size comes.
    The capture buffer is cut to one frame where the driver allows it, so a frame is
    as fresh as the camera module's. `opencv` is the cv2 module (or a fake of its
    VideoCapture, cvtColor and constants); cv2 is imported only when none is given.
    """

    def __init__(
        self,
        device_index: int,
        width: int,
        height: int,
        fps: float,
        *,
        opencv: Any = None,
    ) -> None:
        self._cv2 = opencv if opencv is not None else _cv2()
        self.device_index = device_index
        self._lock = threading.Lock()
        capture = self._cv2.VideoCapture(device_index)
        if not capture.isOpened():
            capture.release()
            raise FrameSourceError(f"cannot open the webcam /dev/video{device_index}")
        for prop, value in (
            (self._cv2.CAP_PROP_FRAME_WIDTH, width),
            (self._cv2.CAP_PROP_FRAME_HEIGHT, height),
            (self._cv2.CAP_PROP_FPS, fps),
            (self._cv2.CAP_PROP_BUFFERSIZE, 1),
        ):
            capture.set(prop, value)  # False when unsupported: the nearest mode is used
        self._capture: Any = capture

    def read(self) -> np.ndarray | None:
        with self._lock:
            if self._capture is None:
                return None
            ok, frame = self._capture.read()
        if not ok or frame is None:
            # A webcam that gives nothing has usually been unplugged: an outage, not an end.
            raise FrameSourceError(f"the webcam /dev/video{self.device_index} gave no frame")
        if frame.ndim == 2:
            return np.ascontiguousarray(frame, dtype=np.uint8)
        grey = self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2GRAY)
        return np.ascontiguousarray(grey, dtype=np.uint8)

    def close(self) -> None:
        """Release the webcam; idempotent."""
        with self._lock:
            capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
