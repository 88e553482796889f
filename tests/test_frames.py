"""Frame sources: image files and folders, and the Pi camera against a recording fake."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import segno
from PIL import Image

from device.decoders import ZxingDecoder
from device.frames import FrameSourceError, ImageFileSource, Picamera2Source, load_grey
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

    def __init__(self, y_plane: np.ndarray, *, stride_padding: int = 64, fail_start: bool = False):
        self.calls: list[tuple[Any, ...]] = []
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
