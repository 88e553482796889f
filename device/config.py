"""The unit's configuration file: a strict, typed, documented schema.

A unit reads one JSON file (`python -m device run --config FILE`), written by
`provisioning add-device`. An unknown key is an error that names the key, never a
silent default: a typo in `debounce_s` must not quietly turn debounce off.
Secrets (broker password) come from files named here, never from the file itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from doorscan.errors import ConfigError
from doorscan.wire import ID_PATTERN, MAX_BATCH_SCANS

__all__ = [
    "UNIT_CONFIG_NAME",
    "BrokerConfig",
    "FramesConfig",
    "PinsConfig",
    "SyncConfig",
    "UnitConfig",
    "UpdatesConfig",
    "load_config",
]

# The one name the unit's config has on a Pi: /etc/doorscan/unit.json, which
# deploy/doorscan-unit.service runs. Enrollment and the bundle import both write it, so a
# unit set up either way starts without anyone renaming a file.
UNIT_CONFIG_NAME = "unit.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerConfig(_Strict):
    host: str = Field("127.0.0.1", description="MQTT broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="MQTT broker port")
    keepalive_s: int = Field(
        30, ge=5, le=600, description="MQTT keepalive; the last will fires after 1.5x this"
    )
    username: str | None = Field(None, description="broker user name, if the broker asks for one")
    password_file: Path | None = Field(None, description="file holding the broker password")
    ca_file: Path | None = Field(
        None, description="PEM of the fleet CA; set it to talk TLS and check the broker's cert"
    )
    cert_file: Path | None = Field(None, description="this unit's client certificate (PEM)")
    key_file: Path | None = Field(None, description="this unit's client private key (PEM, 0600)")

    @model_validator(mode="after")
    def _client_cert_pair(self) -> BrokerConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("broker.cert_file and broker.key_file go together")
        if self.cert_file is not None and self.ca_file is None:
            raise ValueError("broker.cert_file needs broker.ca_file (client certs mean TLS)")
        return self


class PinsConfig(_Strict):
    """BCM pin numbers of the feedback parts (see docs/field-guide.md for wiring)."""

    green_led: int = Field(17, ge=0, le=27, description="green LED (accepted)")
    red_led: int = Field(27, ge=0, le=27, description="red LED (refused, fault)")
    buzzer: int = Field(22, ge=0, le=27, description="active buzzer")
    button: int | None = Field(
        None,
        ge=0,
        le=27,
        description="optional push button to ground; held 3 s at boot, it runs the self-test",
    )

    @model_validator(mode="after")
    def _distinct(self) -> PinsConfig:
        pins = [self.green_led, self.red_led, self.buzzer]
        if self.button is not None:
            pins.append(self.button)
        if len(set(pins)) != len(pins):
            raise ValueError("green_led, red_led, buzzer and button must be different pins")
        return self


class FramesConfig(_Strict):
    source: Literal["picamera2", "opencv", "files"] = Field(
        "picamera2",
        description="picamera2 on a Pi; opencv for a USB webcam; files reads images (tests, demo)",
    )
    device_index: int = Field(
        0, ge=0, le=63, description="for source=opencv: the webcam's index (/dev/videoN)"
    )
    autofocus: Literal["continuous", "fixed"] = Field(
        "continuous",
        description="picamera2 on a Camera Module 3: refocus continuously, or hold lens_position",
    )
    lens_position: float | None = Field(
        None,
        ge=0,
        le=32,
        description="for autofocus=fixed: lens position in dioptres (1/distance in m; 0=infinity)",
    )
    path: Path | None = Field(None, description="image file or folder, for source=files")
    loop: bool = Field(False, description="for source=files: start again after the last image")
    pace: bool = Field(
        False, description="for source=files: hand out frames at `fps`, as a camera would"
    )
    width: int = Field(1280, ge=160, le=4608, description="frame width fed to the decoder")
    height: int = Field(720, ge=120, le=2592, description="frame height fed to the decoder")
    fps: float = Field(15.0, gt=0, le=60, description="frames per second asked of the camera")

    @model_validator(mode="after")
    def _path_for_files(self) -> FramesConfig:
        if self.source == "files" and self.path is None:
            raise ValueError("frames.path is required when frames.source is 'files'")
        if self.autofocus == "fixed" and self.lens_position is None:
            raise ValueError("frames.lens_position is required when frames.autofocus is 'fixed'")
        return self


class SyncConfig(_Strict):
    batch_size: int = Field(100, ge=1, le=MAX_BATCH_SCANS, description="scans per MQTT message")
    ack_timeout_s: float = Field(
        15.0, gt=0, le=3600, description="resend a batch not acked in this time"
    )
    max_in_flight: int = Field(4, ge=1, le=64, description="batches sent and not yet acked")
    reconnect_min_s: float = Field(1.0, gt=0, description="first reconnect delay")
    reconnect_max_s: float = Field(
        60.0, gt=0, description="reconnect delay cap (exponential backoff)"
    )
    retry_refused_min_s: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="a scan the hub cannot take now (no key, no registry record yet) is sent "
        "again after this, doubling each time it is refused again",
    )
    retry_refused_max_s: float = Field(
        1800.0, gt=0, le=86400, description="cap of that delay (exponential backoff)"
    )


class UpdatesConfig(_Strict):
    """Where the unit's signed releases come from and go (`device.update_agent`)."""

    repo_url: str = Field(
        pattern=r"^https?://",
        description="the fleet's update repository, e.g. https://hub.example:8443/releases",
    )
    trusted_root: Path = Field(
        description="the repository's first root metadata (1.root.json), installed with the unit"
    )
    root: Path = Field(
        Path("/opt/doorscan"), description="where releases/, current and previous live"
    )
    python: str = Field(
        "/usr/bin/python3", description="the interpreter that makes each release's venv"
    )
    state_dir: Path | None = Field(
        None, description="TUF metadata and downloads (default: updates/ in data_dir)"
    )
    quiet_s: float = Field(
        60.0, ge=0, description="no scan for this long before the unit restarts into a release"
    )
    confirm_within_s: float = Field(
        600.0,
        gt=0,
        description="a new release must pass its self-test and reach the broker within this "
        "long of the switch, or the unit rolls back",
    )


class UnitConfig(_Strict):
    unit_id: str = Field(pattern=f"^{ID_PATTERN}$", description="this unit's id, as registered")
    venue_id: str = Field(pattern=f"^{ID_PATTERN}$", description="the venue this unit guards")
    data_dir: Path = Field(description="journal and state live here; on the Pi, /var/lib/doorscan")
    decoder: Literal["zxing", "zbar"] = Field("zxing", description="QR decoder library")
    debounce_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="same person at this unit within this time: 'already in', no record",
    )
    repeat_hold_s: float = Field(
        3.0,
        ge=0,
        le=60,
        description="a code seen again within this time is ignored (15 frames/s see a card often)",
    )
    card_keys: list[Path] = Field(
        default_factory=list, description="PEM public keys whose visitor cards this unit accepts"
    )
    seal_key: Path | None = Field(
        None,
        description="the hub's PUBLIC sealing key (PEM); set, scans are sealed before the journal",
    )
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    pins: PinsConfig = Field(default_factory=PinsConfig)
    frames: FramesConfig = Field(default_factory=FramesConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    updates: UpdatesConfig | None = Field(
        None, description="signed software updates; without it the unit never updates itself"
    )


def load_config(path: Path) -> UnitConfig:
    """Read and validate a unit config; relative paths are taken from the file's folder."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        config = UnitConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    base = Path(path).resolve().parent
    broker = config.broker
    return config.model_copy(
        update={
            "broker": broker.model_copy(
                update={
                    name: base / value
                    for name in ("password_file", "ca_file", "cert_file", "key_file")
                    if (value := getattr(broker, name)) is not None
                }
            ),
            "data_dir": base / config.data_dir,
            "card_keys": [base / p for p in config.card_keys],
            "seal_key": base / config.seal_key if config.seal_key else None,
            "frames": config.frames.model_copy(
                update={"path": base / config.frames.path if config.frames.path else None}
            ),
            "updates": None
            if config.updates is None
            else config.updates.model_copy(
                update={
                    "trusted_root": base / config.updates.trusted_root,
                    "root": base / config.updates.root,
                    "state_dir": base / config.updates.state_dir
                    if config.updates.state_dir
                    else None,
                }
            ),
        }
    )
