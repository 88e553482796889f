"""Signed releases: provisioning's commands publish them, a unit's fetcher verifies them.

Everything is real: the repository is written by ``python -m provisioning release ...``
(`provisioning.cli.main`, the commands as docs/field-guide.md prints them), served by a
real HTTP server from the folder, and read by `device.updater.ReleaseFetcher` through
python-tuf's client. The attacks are what a mirror or a man in the middle can do:
serve older signed files, keep serving an expired timestamp, mix files of two
versions, sign with a key of their own, or swap a file's bytes.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata
from tuf.api.serialization.json import JSONSerializer

from device.updater import ReleaseFetcher, UpdateRefused
from doorscan.localbroker import free_port
from doorscan.release import ReleaseManifest
from hub.config import load_hub_config
from hub.web.app import RELEASES_PATH
from hub.web.server import WebThread
from provisioning.cli import main as provisioning
from provisioning.release_repo import ReleaseRepo
from tests.hubstore import open_store

ROOT = Path(__file__).resolve().parents[1]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An empty folder served over HTTP on a free port: (folder, its URL)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel to publish: a small one pip builds, so each test does not build doorscan's."""
    source = tmp_path_factory.mktemp("door-extra")
    (source / "pyproject.toml").write_text(
        '[project]\nname = "door-extra"\nversion = "1.0"\n'
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    (source / "door_extra.py").write_text("GREETING = 'xin chào'\n")
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    subprocess.run([*command, str(source)], check=True, capture_output=True)
    (built,) = out.glob("door_extra-*.whl")
    return built


def _release(home: Path, *args: str) -> int:
    return provisioning(["--home", str(home), "release", *args])


def _mirror(home: Path, mirror: Path) -> None:
    """What the mirror serves: the repository as it is now."""
    shutil.rmtree(mirror)
    shutil.copytree(home / "releases", mirror)


def _fetcher(home: Path, url: str, state: Path, **options: Any) -> ReleaseFetcher:
    trusted = (home / "releases" / "metadata" / "1.root.json").read_bytes()
    return ReleaseFetcher(state, url, trusted, **options)


@pytest.fixture
def home(tmp_path: Path, wheel: Path, served: tuple[Path, str]) -> Path:
    """A fleet home with release 1.0.0 published and mirrored."""
    home = tmp_path / "fleet"
    assert _release(home, "init") == 0
    assert _release(home, "build", "--version", "1.0.0", "--wheel", str(wheel)) == 0
    _mirror(home, served[0])
    return home


def _guide_commands() -> list[list[str]]:
    """The ``release`` commands of docs/field-guide.md, as printed (comments dropped)."""
    guide = (ROOT / "docs" / "field-guide.md").read_text(encoding="utf-8")
    section = guide.split("## 10. Software releases", 1)[1]
    block = section.split("```", 2)[1]
    return [shlex.split(line.split("#", 1)[0]) for line in block.strip().splitlines()]


def test_the_field_guides_ceremony_builds_signs_and_serves_a_release_a_unit_verifies(
    tmp_path: Path, served: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    home, stick = tmp_path / "fleet", tmp_path / "usb"
    commands = _guide_commands()
    assert [c[:2] for c in commands] == [["doorscan-provisioning", "release"]] * 4
    for command in commands:
        argv = [stick.as_posix() if a == "/media/usb/doorscan-root" else a for a in command[1:]]
        assert provisioning(["--home", str(home), *argv]) == 0, command
    out = capsys.readouterr().out
    assert "removable media" in out and "release 1.4.0 signed and published" in out
    assert out.rstrip().endswith("1.4.0")  # `release list`
    # The root key is on the stick only, 0600; the online keys stay in the home.
    assert (stick / "root.pem").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (home / "release-keys").iterdir()) == [
        "snapshot.pem",
        "targets.pem",
        "timestamp.pem",
    ]
    assert not list(home.rglob("root.pem"))
    _mirror(home, served[0])
    fetched = _fetcher(home, served[1], tmp_path / "unit").fetch("1.4.0")
    kinds = {f.name: f.kind for f in fetched.manifest.files}
    assert kinds.pop("doorscan-unit.service") == "service"
    assert set(kinds.values()) == {"wheel"}
    # doorscan's wheel, built by pip, with the release's number as its version
    assert "doorscan-1.4.0-py3-none-any.whl" in kinds
    # and what it needs, for a Pi on 64-bit Raspberry Pi OS: pure Python or aarch64 wheels
    needs = {name.split("-")[0].lower() for name in kinds}
    assert {"numpy", "zxing_cpp", "paho_mqtt", "cryptography", "tuf", "pydantic_core"} <= needs
    assert all(n.endswith("-none-any.whl") or "aarch64" in n for n in kinds), sorted(kinds)
    for listed in fetched.manifest.files:
        body = fetched.files[listed.name].read_bytes()
        assert (hashlib.sha256(body).hexdigest(), len(body)) == (listed.sha256, listed.length)
    service = (ROOT / "deploy" / "doorscan-unit.service").read_bytes()
    assert fetched.files["doorscan-unit.service"].read_bytes() == service
    # Built from a copy: the checkout got no build/ or egg-info of the release's making.
    assert not (ROOT / "build").exists()


def test_a_published_version_is_never_replaced(
    home: Path, wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _release(home, "build", "--version", "1.0.0", "--wheel", str(wheel)) == 1
    assert "already published" in capsys.readouterr().err
    assert _release(home, "build", "--version", "1.0", "--wheel", str(wheel)) == 1
    assert "not a release number" in capsys.readouterr().err


def test_rollback_to_older_signed_metadata_is_refused(
    home: Path, wheel: Path, served: tuple[Path, str], tmp_path: Path
) -> None:
    mirror, url = served
    old = tmp_path / "old"
    shutil.copytree(mirror, old)  # what the attacker kept: the 1.0.0 repository
    assert _release(home, "build", "--version", "1.1.0", "--wheel", str(wheel)) == 0
    _mirror(home, mirror)
    unit = _fetcher(home, url, tmp_path / "unit")
    assert unit.fetch("1.1.0").manifest.version == "1.1.0"  # the unit saw the new metadata
    shutil.rmtree(mirror)
    shutil.copytree(old, mirror)  # the attacker's mirror serves the old repository again
    with pytest.raises(UpdateRefused, match="BadVersionNumberError") as refused:
        unit.fetch("1.0.0")
    assert refused.value.code == "repository_refused"


def test_an_expired_timestamp_is_refused(
    home: Path, served: tuple[Path, str], tmp_path: Path
) -> None:
    # A timestamp signed two days ago and valid for one: what a mirror that froze the
    # fleet on old releases keeps serving.
    repo = ReleaseRepo(home / "releases", home / "release-keys")
    repo.stamp(datetime.now(UTC) - timedelta(days=2))
    _mirror(home, served[0])
    with pytest.raises(UpdateRefused, match="ExpiredMetadataError"):
        _fetcher(home, served[1], tmp_path / "unit").fetch("1.0.0")
    assert _release(home, "stamp") == 0  # the daily stamp mends it
    _mirror(home, served[0])
    assert _fetcher(home, served[1], tmp_path / "unit").fetch("1.0.0").manifest.version == "1.0.0"


def test_targets_of_another_version_or_another_key_are_refused(
    home: Path, wheel: Path, served: tuple[Path, str], tmp_path: Path
) -> None:
    mirror, url = served
    metadata = home / "releases" / "metadata"
    old_targets = max(metadata.glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    assert _release(home, "build", "--version", "1.1.0", "--wheel", str(wheel)) == 0
    _mirror(home, mirror)
    new_targets = max(
        (mirror / "metadata").glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0])
    )
    # Mix and match: the old targets metadata served under the new one's name.
    new_targets.write_bytes(old_targets.read_bytes())
    with pytest.raises(UpdateRefused, match="BadVersionNumberError"):
        _fetcher(home, url, tmp_path / "unit-a").fetch("1.1.0")
    # The new targets metadata, signed with a key of the attacker's own.
    forged: Metadata[Any] = Metadata.from_bytes((metadata / new_targets.name).read_bytes())
    forged.sign(CryptoSigner.generate_ed25519())
    new_targets.write_bytes(forged.to_bytes(JSONSerializer()))
    with pytest.raises(UpdateRefused, match="UnsignedMetadataError"):
        _fetcher(home, url, tmp_path / "unit-b").fetch("1.1.0")


def test_a_file_whose_bytes_differ_from_the_signed_hash_is_refused_and_not_kept(
    home: Path, served: tuple[Path, str], tmp_path: Path
) -> None:
    mirror, url = served
    (stored,) = (mirror / "targets" / "releases" / "1.0.0").glob("*.door_extra-*.whl")
    body = bytearray(stored.read_bytes())
    body[-1] ^= 0xFF  # same length, other bytes
    stored.write_bytes(bytes(body))
    state = tmp_path / "unit"
    with pytest.raises(UpdateRefused, match="LengthOrHashMismatchError"):
        _fetcher(home, url, state).fetch("1.0.0")
    assert not list((state / "downloads" / "1.0.0").glob("*.whl"))


def test_an_unknown_release_and_a_full_disk_are_refused_before_any_download(
    home: Path, served: tuple[Path, str], tmp_path: Path
) -> None:
    state = tmp_path / "unit"
    with pytest.raises(UpdateRefused) as refused:
        _fetcher(home, served[1], state).fetch("9.9.9")
    assert refused.value.code == "no_such_release"
    tight = _fetcher(home, served[1], state, free_bytes=lambda _: 1_000_000)
    with pytest.raises(UpdateRefused) as refused:
        tight.fetch("1.0.0")
    assert refused.value.code == "no_room"
    # Only the manifest, which said how much room the release needs.
    assert [p.name for p in (state / "downloads" / "1.0.0").iterdir()] == ["manifest.json"]


def test_the_manifest_reads_back_as_written(home: Path) -> None:
    (manifest,) = (home / "releases" / "targets" / "releases" / "1.0.0").glob("*.manifest.json")
    read = ReleaseManifest.model_validate_json(manifest.read_bytes())
    assert read.version == "1.0.0" and read.total_bytes() > 0


def test_the_hubs_web_server_serves_the_repository_to_units(home: Path, tmp_path: Path) -> None:
    # hub.toml as docs/field-guide.md says: a copy of the repository, named relative to the file.
    shutil.copytree(home / "releases", tmp_path / "hub" / "releases")
    (tmp_path / "hub" / "hub.toml").write_text('[http]\nreleases_dir = "releases"\n')
    http = load_hub_config(tmp_path / "hub" / "hub.toml").http
    with open_store(tmp_path / "hub.db") as store:
        port = free_port()
        web = WebThread(store, ("127.0.0.1", port), None, releases_dir=http.releases_dir)
        try:
            assert web.wait_started(30)
            url = f"http://127.0.0.1:{port}{RELEASES_PATH}"
            fetched = _fetcher(home, url, tmp_path / "unit").fetch("1.0.0")
            assert fetched.manifest.version == "1.0.0"
            # No login needed; only timestamp.json, and what is not there yet, may go stale.
            with urllib.request.urlopen(f"{url}/metadata/timestamp.json") as answer:  # noqa: S310
                assert answer.headers["Cache-Control"] == "no-cache"
            with urllib.request.urlopen(f"{url}/metadata/1.root.json") as answer:  # noqa: S310
                assert "immutable" in answer.headers["Cache-Control"]
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(f"{url}/metadata/2.root.json")  # noqa: S310
            assert missing.value.code == 404
            assert missing.value.headers["Cache-Control"] == "no-cache"
        finally:
            web.close()


class _Stalling(_Quiet):
    """Serves a wheel's first half, then waits until `release` is set (a dying link)."""

    half_sent = threading.Event()
    release = threading.Event()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if not self.path.endswith(".whl"):
            super().copyfile(source, outputfile)
            return
        body = source.read()
        outputfile.write(body[: len(body) // 2])
        outputfile.flush()
        type(self).half_sent.set()
        type(self).release.wait(30)
        outputfile.write(body[len(body) // 2 :])


_FETCH = """
import sys
from pathlib import Path
from device.updater import ReleaseFetcher
state, url, root = sys.argv[1:4]
ReleaseFetcher(Path(state), url, Path(root).read_bytes()).fetch("1.0.0")
"""


def test_a_download_killed_half_way_leaves_nothing_to_install_and_is_fetched_again(
    home: Path, tmp_path: Path
) -> None:
    _Stalling.half_sent.clear()
    _Stalling.release.clear()
    handler = partial(_Stalling, directory=str(home / "releases"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    state = tmp_path / "unit"
    root = home / "releases" / "metadata" / "1.root.json"
    try:
        fetching = subprocess.Popen([sys.executable, "-c", _FETCH, str(state), url, str(root)])
        assert _Stalling.half_sent.wait(60)
        fetching.kill()  # SIGKILL, half the wheel received
        assert fetching.wait(30) == -9
        downloads = state / "downloads" / "1.0.0"
        assert [p.name for p in downloads.iterdir()] == ["manifest.json"]  # no wheel to install
        _Stalling.release.set()
        fetched = _fetcher(home, url, state).fetch("1.0.0")
        for listed in fetched.manifest.files:
            body = fetched.files[listed.name].read_bytes()
            assert hashlib.sha256(body).hexdigest() == listed.sha256
    finally:
        _Stalling.release.set()
        server.shutdown()
        server.server_close()
