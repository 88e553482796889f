"""Frame sources: image files and folders, and the Pi camera against a recording fake."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import segno
from PIL import Image

from device.config import FramesConfig
from device.decoders import ZxingDecoder
from device.frames import (
    AF_MODE_CONTINUOUS,
    AF_MODE_MANUAL,
    FrameSourceError,
    ImageFileSource,
    OpenCvSource,
    Picamera2Source,
    load_grey,
    open_frames,
)
from doorscan.errors import DoorscanError


def write_qr(path: Path, text: str) -> Path:
    segno.make(text, error="m", encoding="utf-8", micro=False).save(str(path), scale=4, border=4)
    return path


def texts_of(frame: np.ndarray | None) -> list[str | None]:
    assert frame is not None
    assert frame.ndim == 2 and frame.dtype == np.uint8
    with ZxingDecoder() as decoder:
        return [symbol.text for symbol in decoder.decode(frame)]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Three codes whose names sort differently from the order they were written in."""
    write_qr(tmp_path / "10-c.png", "Thôn 3")
    write_qr(tmp_path / "02-b.PNG", "Nữ")
    Image.open(write_qr(tmp_path / "tmp.png", "Rơ Châm")).convert("RGB").save(
        tmp_path / "01-a.jpg", quality=95
    )
    (tmp_path / "tmp.png").unlink()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()  # a folder with an image's name is not a file
    return tmp_path


def test_folder_images_in_name_order_then_none(folder: Path) -> None:
    with ImageFileSource(folder) as frames:
        assert [p.name for p in frames.files] == ["01-a.jpg", "02-b.PNG", "10-c.png"]
        assert [texts_of(frames.read()) for _ in range(3)] == [["Rơ Châm"], ["Nữ"], ["Thôn 3"]]
        assert frames.read() is None
        assert frames.read() is None


def test_loop_starts_again(folder: Path) -> None:
    frames = ImageFileSource([folder], loop=True)
    seen = [texts_of(frames.read())[0] for _ in range(7)]
    assert seen == ["Rơ Châm", "Nữ", "Thôn 3"] * 2 + ["Rơ Châm"]
    frames.close()
    assert frames.read() is None


def test_files_keep_the_order_given(folder: Path) -> None:
    given = [folder / "10-c.png", folder, folder / "02-b.PNG"]
    with ImageFileSource(given) as frames:
        names = [p.name for p in frames.files]
    assert names == ["10-c.png", "01-a.jpg", "02-b.PNG", "10-c.png", "02-b.PNG"]


def test_empty_sources_give_none_even_when_looping(tmp_path: Path) -> None:
    assert ImageFileSource(tmp_path, loop=True).read() is None
    assert ImageFileSource([], loop=True).read() is None


def test_rgb_input_becomes_grey(tmp_path: Path) -> None:
    rgb = Image.new("RGB", (3, 2), (255, 0, 0))
    rgb.putpixel((1, 0), (0, 255, 0))
    rgb.putpixel((2, 0), (0, 0, 255))
    rgb.putpixel((0, 1), (255, 255, 255))
    rgb.save(tmp_path / "colours.png")
    with ImageFileSource(tmp_path / "colours.png") as frames:
        frame = frames.read()
    assert frame is not None and frame.dtype == np.uint8
    # ITU-R 601 luma, as Pillow's "L" mode: 0.299 R + 0.587 G + 0.114 B.
    assert frame.tolist() == [[76, 150, 29], [255, 76, 76]]


def test_unreadable_file_names_it_and_the_next_read_goes_on(tmp_path: Path) -> None:
    (tmp_path / "a-broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    write_qr(tmp_path / "b-good.png", "Thôn 3")
    frames = ImageFileSource(tmp_path)
    with pytest.raises(FrameSourceError, match=r"a-broken\.png") as raised:
        frames.read()
    assert isinstance(raised.value, OSError) and isinstance(raised.value, DoorscanError)
    assert texts_of(frames.read()) == ["Thôn 3"]
    assert frames.read() is None


def test_missing_path_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(FrameSourceError, match="nowhere"):
        ImageFileSource([tmp_path / "nowhere"])
    with pytest.raises(FrameSourceError, match=r"nowhere\.png"):
        load_grey(tmp_path / "nowhere.png")


def test_load_grey_of_a_truncated_file(tmp_path: Path) -> None:
    whole = write_qr(tmp_path / "whole.png", "Nữ").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FrameSourceError, match=r"cut\.png"):
        load_grey(tmp_path / "cut.png")


# --- Picamera2Source against a fake Picamera2 -------------------------------------


class FakePicamera2:
    """Mirrors the picamera2 calls Picamera2Source makes, and records them.

    capture_array("lores") returns a YUV420 buffer like picamera2's: (h*3//2, stride)
    with the Y plane on top, U and V below, and a stride wider than the image.
    """

    # What picamera2 lists for a Camera Module 3 (imx708): autofocus controls exist.
    CM3_CONTROLS: ClassVar[dict[str, Any]] = {
        "FrameRate": (1.0, 120.0, None),
        "AfMode": (0, 2, 0),
        "LensPosition": (0.0, 32.0, 1.0),
    }
    # A Camera Module 2 (imx219): fixed focus, no AfMode.
    CM2_CONTROLS: ClassVar[dict[str, Any]] = {"FrameRate": (1.0, 120.0, None)}

    def __init__(
        self,
        y_plane: np.ndarray,
        *,
        stride_padding: int = 64,
        fail_start: bool = False,
        camera_controls: dict[str, Any] | None = None,
    ):
        self.calls: list[tuple[Any, ...]] = []
        self.camera_controls = dict(
            self.CM2_CONTROLS if camera_controls is None else camera_controls
        )
        self.y_plane = y_plane
        self.stride_padding = stride_padding
        self.fail_start = fail_start

    def create_video_configuration(
        self,
        main: dict[str, Any] | None = None,
        lores: dict[str, Any] | None = None,
        controls: dict[str, Any] | None = None,
        queue: bool = True,
    ) -> dict[str, Any]:
        settings = {"main": main, "lores": lores, "controls": controls, "queue": queue}
        self.calls.append(("create_video_configuration", settings))
        self.lores_size = (lores or {})["size"]
        return {"use_case": "video", **settings}

    def configure(self, camera_config: dict[str, Any]) -> None:
        self.calls.append(("configure", camera_config))

    def start(self) -> None:
        self.calls.append(("start",))
        if self.fail_start:
            raise RuntimeError("Camera __init__ sequence did not complete.")

    def capture_array(self, name: str = "main") -> np.ndarray:
        self.calls.append(("capture_array", name))
        width, height = self.lores_size
        stride = width + self.stride_padding
        yuv = np.full((height * 3 // 2, stride), 255, dtype=np.uint8)  # padding: white
        yuv[:height, :width] = self.y_plane
        yuv[height:, :width] = 0  # U and V: black, so they would show if read as grey
        return yuv

    def stop(self) -> None:
        self.calls.append(("stop",))

    def close(self) -> None:
        self.calls.append(("close",))


def camera_view(text: str, width: int = 640, height: int = 480) -> np.ndarray:
    qr = segno.make(text, error="m", encoding="utf-8", micro=False)
    code = np.array(qr.matrix, dtype=np.uint8)  # 1 = dark module
    code = np.pad(code, 4).repeat(4, axis=0).repeat(4, axis=1)
    view = np.full((height, width), 140, dtype=np.uint8)
    view[30 : 30 + code.shape[0], 50 : 50 + code.shape[1]] = np.where(code == 1, 20, 235)
    return view


def test_picamera2_source_configures_reads_the_y_plane_and_closes() -> None:
    view = camera_view("064090123456||Nguyễn Văn An|01011990|Nam|Thôn 3|15082021")
    camera = FakePicamera2(view)
    source = Picamera2Source(640, 480, 15.0, camera_factory=lambda: camera)
    expected_config = {
        "main": {"size": (640, 480)},
        "lores": {"size": (640, 480), "format": "YUV420"},
        "controls": {"FrameRate": 15.0},
        "queue": False,
    }
    assert camera.calls[0] == ("create_video_configuration", expected_config)
    # configure() gets what create_video_configuration() returned, then the camera starts.
    assert camera.calls[1:] == [("configure", {"use_case": "video", **expected_config}), ("start",)]

    frame = source.read()
    assert frame is not None
    assert frame.shape == (480, 640) and frame.dtype == np.uint8 and frame.flags.c_contiguous
    assert np.array_equal(frame, view)  # no U/V rows, no stride padding
    assert texts_of(frame) == ["064090123456||Nguyễn Văn An|01011990|Nam|Thôn 3|15082021"]
    assert camera.calls[3] == ("capture_array", "lores")

    with source:
        pass
    source.close()  # idempotent: the camera is stopped and closed once
    assert camera.calls[4:] == [("stop",), ("close",)]
    assert source.read() is None
    assert len(camera.calls) == 6


def test_picamera2_source_that_fails_to_start_releases_the_camera() -> None:
    camera = FakePicamera2(np.zeros((120, 160), dtype=np.uint8), fail_start=True)
    with pytest.raises(FrameSourceError, match="did not start"):
        Picamera2Source(160, 120, 10.0, camera_factory=lambda: camera)
    assert [call[0] for call in camera.calls][-2:] == ["stop", "close"]


def test_picamera2_source_without_a_camera() -> None:
    def no_camera() -> FakePicamera2:
        raise RuntimeError("Camera(s) not found (Do not forget to disable legacy camera)")

    with pytest.raises(FrameSourceError, match="cannot open the camera: Camera"):
        Picamera2Source(640, 480, 15.0, camera_factory=no_camera)


@pytest.mark.skipif(
    importlib.util.find_spec("picamera2") is not None, reason="picamera2 is installed here"
)
def test_without_picamera2_the_error_says_what_to_do() -> None:
    with pytest.raises(FrameSourceError, match="picamera2 is not installed"):
        Picamera2Source(640, 480, 15.0)


def test_a_paced_source_hands_out_frames_no_faster_than_asked(tmp_path: Path) -> None:
    Image.new("L", (64, 48), 200).save(tmp_path / "a.png")
    fps = 40.0
    with ImageFileSource(tmp_path, loop=True, pace_fps=fps) as frames:
        start = time.monotonic()
        for _ in range(9):
            assert frames.read() is not None
        elapsed = time.monotonic() - start
    # A lower bound only: sleeping can be late on a busy machine, never early.
    assert elapsed >= 8 / fps - 0.005


@pytest.mark.parametrize(
    ("controls", "lens_position", "expected"),
    [
        # Camera Module 3: continuous AF by default, manual at a fixed lens position.
        (FakePicamera2.CM3_CONTROLS, None, {"FrameRate": 15.0, "AfMode": AF_MODE_CONTINUOUS}),
        (
            FakePicamera2.CM3_CONTROLS,
            4.0,
            {"FrameRate": 15.0, "AfMode": AF_MODE_MANUAL, "LensPosition": 4.0},
        ),
        # Camera Module 2 has no autofocus: no AF control is sent, whatever the config says.
        (FakePicamera2.CM2_CONTROLS, None, {"FrameRate": 15.0}),
        (FakePicamera2.CM2_CONTROLS, 4.0, {"FrameRate": 15.0}),
    ],
)
def test_focus_controls_follow_the_camera(
    controls: dict[str, Any], lens_position: float | None, expected: dict[str, Any]
) -> None:
    camera = FakePicamera2(camera_view("x"), camera_controls=controls)
    with Picamera2Source(
        640, 480, 15.0, lens_position=lens_position, camera_factory=lambda: camera
    ) as source:
        assert source.read() is not None
    assert camera.calls[0][1]["controls"] == expected
    assert camera.calls[0][1]["queue"] is False


def test_libcamera_af_mode_numbers() -> None:
    # libcamera's AfModeEnum: Manual = 0, Auto = 1, Continuous = 2 (control_ids_core.yaml).
    assert (AF_MODE_MANUAL, AF_MODE_CONTINUOUS) == (0, 2)


def test_focus_config_is_checked() -> None:
    with pytest.raises(ValueError, match="lens_position is required"):
        FramesConfig(autofocus="fixed")
    assert FramesConfig(autofocus="fixed", lens_position=2.5).lens_position == 2.5
    with pytest.raises(ValueError, match="autofocs"):
        FramesConfig.model_validate({"autofocs": "fixed"})


def test_without_picamera2_the_error_says_what_to_install() -> None:
    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("picamera2 is installed here")
    with pytest.raises(FrameSourceError, match="python3-picamera2"):
        open_frames(FramesConfig())


# --- OpenCvSource against a fake cv2 ----------------------------------------------


class FakeVideoCapture:
    """Mirrors cv2.VideoCapture's read()/set()/isOpened()/release(), recording calls."""

    def __init__(self, frames: list[np.ndarray | None], *, opened: bool = True) -> None:
        self.frames = list(frames)
        self.opened = opened
        self.calls: list[tuple[Any, ...]] = []

    def isOpened(self) -> bool:
        return self.opened

    def set(self, prop: int, value: float) -> bool:
        self.calls.append(("set", prop, value))
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        self.calls.append(("read",))
        if not self.frames:
            return False, None
        frame = self.frames.pop(0)
        return frame is not None, frame

    def release(self) -> None:
        self.calls.append(("release",))


class FakeCv2:
    """The part of the cv2 module OpenCvSource uses; cvtColor is ITU-R 601 luma, as cv2's."""

    CAP_PROP_FRAME_WIDTH = 3
    CAP_PROP_FRAME_HEIGHT = 4
    CAP_PROP_FPS = 5
    CAP_PROP_BUFFERSIZE = 38
    COLOR_BGR2GRAY = 6

    def __init__(self, capture: FakeVideoCapture) -> None:
        self.capture = capture
        self.opened_index: int | None = None
        self.conversions: list[int] = []

    def VideoCapture(self, index: int) -> FakeVideoCapture:
        self.opened_index = index
        return self.capture

    def cvtColor(self, frame: np.ndarray, code: int) -> np.ndarray:
        assert code == self.COLOR_BGR2GRAY and frame.ndim == 3 and frame.shape[2] == 3
        self.conversions.append(code)
        b, g, r = (frame[..., i].astype(np.float64) for i in range(3))
        return np.rint(0.299 * r + 0.587 * g + 0.114 * b).astype(np.uint8)


def test_opencv_source_gives_grey_from_bgr_and_decodes() -> None:
    text = "064090123456||Nguyễn Văn An|01011990|Nam|Thôn 3|15082021"
    grey = camera_view(text)
    bgr = np.stack([grey, grey, grey], axis=2)
    bgr[0, 0] = (255, 0, 0)  # pure blue in BGR order: luma 29, not red's 76
    capture = FakeVideoCapture([bgr])
    cv2 = FakeCv2(capture)
    source = OpenCvSource(2, 1280, 720, 15.0, opencv=cv2)
    assert cv2.opened_index == 2
    assert ("set", FakeCv2.CAP_PROP_FRAME_WIDTH, 1280) in capture.calls
    assert ("set", FakeCv2.CAP_PROP_FRAME_HEIGHT, 720) in capture.calls
    assert ("set", FakeCv2.CAP_PROP_FPS, 15.0) in capture.calls
    frame = source.read()
    assert frame is not None and frame.ndim == 2 and frame.dtype == np.uint8
    assert cv2.conversions == [FakeCv2.COLOR_BGR2GRAY]
    assert frame[0, 0] == 29
    assert texts_of(frame) == [text]
    # The webcam unplugged: an error naming it (the unit's outage handling takes over).
    with pytest.raises(FrameSourceError, match="video2"):
        source.read()
    source.close()
    source.close()
    assert capture.calls.count(("release",)) == 1
    assert source.read() is None


def test_opencv_source_refuses_a_webcam_that_does_not_open() -> None:
    capture = FakeVideoCapture([], opened=False)
    with pytest.raises(FrameSourceError, match="video0"):
        OpenCvSource(0, 640, 480, 15.0, opencv=FakeCv2(capture))
    assert capture.calls == [("release",)]


def test_without_opencv_the_error_says_what_to_install() -> None:
    if importlib.util.find_spec("cv2") is not None:
        pytest.skip("OpenCV is installed here")
    with pytest.raises(FrameSourceError, match="opencv-python-headless"):
        open_frames(FramesConfig(source="opencv"))
