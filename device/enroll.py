"""Enrollment mode: a unit that was installed with only the fleet's public parts becomes
a registered unit with its own key, from one QR the technician shows it.

`python -m device enroll --config bootstrap.json` reads frames like a running unit,
ignores every code that is not an enrollment QR, and for one that is:

1. verifies it offline against the enrollment public key it was installed with
   (a foreign, altered, expired or malformed code: red, and the reason in the log);
2. makes an EC P-256 key here, writes it 0600 to `data_dir`, and a CSR whose CN is
   the unit id (configured, or ``<venue id>-<random>``);
3. posts token and CSR to the enrollment server over TLS, checking the server's
   certificate against the fleet CA it was installed with;
4. checks the answer (the certificate is for its own key and name), writes the
   certificate, the CA, the card and sealing keys and ``unit.json`` (a `UnitConfig` for
   `python -m device run`), each atomically; ``unit.json`` goes to `config_file` when the
   bootstrap names one (on a Pi, /etc/doorscan/unit.json, where the service reads it,
   with absolute paths into `data_dir`), else beside the key in `data_dir`;
5. shows `Feedback.ENROLLED`, the pattern the technician waits for.

The private key is never sent: the CSR carries its public half and a signature.
A refusal by the server (a used code, a taken unit id) is red with the server's reason;
the unit keeps looking until `deadline_s` or `--max-frames`, then exits non-zero.

The bootstrap file (strict, like `device.config`)::

    {"server_url": "https://hub.local:8443", "ca_file": "ca.pem",
     "enroll_keys": ["enroll-signing.pub.pem"], "data_dir": "/var/lib/doorscan",
     "config_file": "/etc/doorscan/unit.json"}
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device.config import UNIT_CONFIG_NAME, FramesConfig, PinsConfig, UnitConfig
from device.decoders import Decoder, make_decoder
from device.frames import FrameSource, FrameSourceError, open_frames
from device.indicators import Feedback, Indicators
from doorscan import enrollment as contract
from doorscan.atomicfile import write_atomic
from doorscan.enrollment import EnrollmentKeyring, EnrollmentToken, EnrollResponse
from doorscan.errors import ConfigError, DoorscanError, Refusal
from doorscan.wire import ID_PATTERN

__all__ = [
    "EnrollmentConfig",
    "EnrollmentError",
    "Enrolled",
    "load_enrollment_config",
    "enroll_unit",
]

log = logging.getLogger(__name__)

_SUFFIX_ALPHABET = "abcdefghjkmnpqrstvwxyz23456789"
_SUFFIX_LEN = 6
_RETRY_AFTER_FAULT_S = 5.0  # a network failure is retried with the same QR after this


class EnrollmentError(DoorscanError, RuntimeError):
    """The server could not be reached or answered something unusable."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnrollmentConfig(_Strict):
    """What a unit is installed with before it is enrolled: public parts only."""

    server_url: str = Field(
        pattern=r"^https://", description="the enrollment server, https://HOST:PORT"
    )
    ca_file: Path = Field(description="the fleet CA (PEM): checks the server, later the broker")
    enroll_keys: list[Path] = Field(
        min_length=1, description="the fleet's enrollment public keys (PEM) to trust"
    )
    data_dir: Path = Field(description="where the key and certificate are written")
    config_file: Path | None = Field(
        None,
        description="where unit.json is written for the service (default: data_dir/unit.json)",
    )
    unit_id: str | None = Field(
        None,
        pattern=f"^{ID_PATTERN}$",
        description="this unit's id; default <venue id>-<6 random characters>",
    )
    decoder: Literal["zxing", "zbar"] = Field("zxing", description="QR decoder library")
    frames: FramesConfig = Field(default_factory=FramesConfig)
    pins: PinsConfig = Field(default_factory=PinsConfig)
    timeout_s: float = Field(20.0, gt=0, le=300, description="one request to the server")
    deadline_s: float = Field(
        900.0, gt=0, le=86400, description="give up (exit non-zero) after this long"
    )


def load_enrollment_config(path: Path) -> EnrollmentConfig:
    """Read and validate a bootstrap file; relative paths are taken from its folder."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        config = EnrollmentConfig.model_validate(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    base = Path(path).resolve().parent
    return config.model_copy(
        update={
            "ca_file": base / config.ca_file,
            "enroll_keys": [base / p for p in config.enroll_keys],
            "data_dir": base / config.data_dir,
            "config_file": base / config.config_file if config.config_file else None,
            "frames": config.frames.model_copy(
                update={"path": base / config.frames.path if config.frames.path else None}
            ),
        }
    )


@dataclass(frozen=True)
class Enrolled:
    """The outcome of a successful enrollment."""

    unit_id: str
    venue_id: str
    config_path: Path
    key_path: Path


class _ServerRefused(DoorscanError):
    """The server said no (4xx): this QR will not work, another may."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.status, self.code, self.reason = status, code, reason


def _unit_id_for(config: EnrollmentConfig, venue_id: str) -> str:
    if config.unit_id is not None:
        return config.unit_id
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(_SUFFIX_LEN))
    return f"{venue_id[: 62 - _SUFFIX_LEN]}-{suffix}"


def _csr(key: ec.EllipticCurvePrivateKey, unit_id: str) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, unit_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _post(config: EnrollmentConfig, body: bytes) -> EnrollResponse:
    context = ssl.create_default_context(cafile=str(config.ca_file))
    url = config.server_url.rstrip("/") + contract.ENROLL_PATH
    request = urllib.request.Request(  # noqa: S310  # the scheme is https, checked by the config
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=config.timeout_s, context=context) as answer:  # noqa: S310
            raw = answer.read(1024 * 1024)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            text = exc.read(4096)
        try:
            error = contract.ErrorResponse.model_validate_json(text)
        except ValidationError:
            raise EnrollmentError(f"the server answered HTTP {exc.code}") from None
        raise _ServerRefused(exc.code, error.error, error.reason) from None
    except (urllib.error.URLError, OSError) as exc:
        raise EnrollmentError(f"cannot reach {url}: {exc}") from None
    try:
        return EnrollResponse.model_validate_json(raw)
    except ValidationError:
        raise EnrollmentError("the server's answer is not an enrollment response") from None


def _check_answer(
    answer: EnrollResponse,
    unit_id: str,
    token: EnrollmentToken,
    key: ec.EllipticCurvePrivateKey,
    ca_pem: bytes,
) -> None:
    if answer.unit_id != unit_id or answer.venue_id != token.venue_id:
        raise EnrollmentError("the server enrolled a different unit or venue than asked")
    try:
        cert = x509.load_pem_x509_certificate(answer.certificate.encode("ascii"))
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise EnrollmentError(f"the certificate is not from the fleet CA: {exc}") from None
    except Exception as exc:  # cryptography's InvalidSignature
        raise EnrollmentError(f"the certificate is not signed by the fleet CA: {exc}") from None
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise EnrollmentError("the certificate is not for this unit's key")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [n.value for n in names] != [unit_id]:
        raise EnrollmentError("the certificate is not for this unit's id")


def _write_result(
    config: EnrollmentConfig, answer: EnrollResponse, ca_pem: bytes
) -> tuple[Path, Path]:
    out = config.data_dir
    config_path = config.config_file or out / UNIT_CONFIG_NAME
    # A unit.json kept elsewhere names the data folder's files by absolute path; one in
    # the data folder names them relatively, so the folder can be moved whole.
    here = out.resolve() if config.config_file else None

    def name(file: str) -> str:
        return str(here / file) if here else file

    unit_id = answer.unit_id
    cert_path = out / f"{unit_id}-cert.pem"
    write_atomic(cert_path, answer.certificate.encode("ascii"))
    # Our installed CA, not the server's copy: _check_answer verified they agree on the cert.
    write_atomic(out / "ca.pem", ca_pem)
    card_keys = []
    for key_id, pem in sorted(answer.config.card_keys.items()):
        if not re.fullmatch(r"[0-9a-f]{8}", key_id):
            raise EnrollmentError(f"the server sent a card key with a bad id {key_id!r}")
        file = f"card-signing-{key_id}.pub.pem"
        write_atomic(out / file, pem.encode("ascii"))
        card_keys.append(name(file))
    settings: dict[str, Any] = {
        "unit_id": unit_id,
        "venue_id": answer.venue_id,
        "data_dir": name("."),
        "decoder": config.decoder,
        "card_keys": card_keys,
        "pins": config.pins.model_dump(mode="json"),
        "frames": config.frames.model_dump(mode="json", exclude_none=True),
        "broker": {
            "host": answer.config.broker_host,
            "port": answer.config.broker_port,
            "ca_file": name("ca.pem"),
            "cert_file": name(cert_path.name),
            "key_file": name(f"{unit_id}-key.pem"),
        },
    }
    if answer.config.seal_public_key is not None:
        write_atomic(out / "hub-seal.pub", answer.config.seal_public_key.encode("ascii"))
        settings["seal_key"] = name("hub-seal.pub")
    try:
        unit_config = UnitConfig.model_validate(settings)
    except ValidationError as exc:
        raise EnrollmentError(f"the server's settings make no valid unit config: {exc}") from None
    text = json.dumps(unit_config.model_dump(mode="json", exclude_unset=True), indent=2) + "\n"
    # Last: a unit.json exists only when everything it names is on disk.
    config_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(config_path, text.encode("utf-8"))
    return config_path, cert_path


def _try(config: EnrollmentConfig, token: EnrollmentToken, text: str, ca_pem: bytes) -> Enrolled:
    """One enrollment attempt with a verified token."""
    unit_id = _unit_id_for(config, token.venue_id)
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = config.data_dir / f"{unit_id}-key.pem"
    config.data_dir.mkdir(parents=True, exist_ok=True)
    # Written before asking: if the answer arrives and the unit then loses power, the
    # certificate the server issued still has its key here.
    write_atomic(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    body = json.dumps({"token": text, "csr": _csr(key, unit_id)}).encode("utf-8")
    try:
        answer = _post(config, body)
        _check_answer(answer, unit_id, token, key, ca_pem)
    except BaseException:
        key_path.unlink(missing_ok=True)  # a key no certificate will ever name
        raise
    config_path, _ = _write_result(config, answer, ca_pem)
    return Enrolled(unit_id, token.venue_id, config_path, key_path)


def enroll_unit(
    config: EnrollmentConfig,
    *,
    max_frames: int | None = None,
    pin_factory: Any = None,
    frames_factory: Callable[[], FrameSource] | None = None,
    decoder: Decoder | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    report: Callable[[str], None] = print,
) -> Enrolled | None:
    """Look at frames until a QR enrolls this unit; None at the deadline or frame limit.

    `report` gets one line per refusal or success, for the technician's console.
    """
    keyring = EnrollmentKeyring.from_pem_files(config.enroll_keys)
    ca_pem = config.ca_file.read_bytes()
    refused: set[str] = set()
    faulted: dict[str, float] = {}
    deadline = time.monotonic() + config.deadline_s
    pins = config.pins
    own_decoder = make_decoder(config.decoder) if decoder is None else None
    with (
        contextlib.ExitStack() as stack,
        Indicators(pins.green_led, pins.red_led, pins.buzzer, pin_factory=pin_factory) as leds,
    ):
        frames = (frames_factory or (lambda: open_frames(config.frames)))()
        stack.callback(frames.close)
        if own_decoder is not None:
            close = getattr(own_decoder, "close", None)
            if callable(close):
                stack.callback(close)
        decoder = decoder if decoder is not None else own_decoder
        assert decoder is not None
        count = 0
        while time.monotonic() < deadline and (max_frames is None or count < max_frames):
            try:
                frame = frames.read()
            except FrameSourceError as exc:
                log.warning("%s", exc)
                count += 1
                continue
            if frame is None:
                break
            count += 1
            for symbol in decoder.decode(frame):
                text = symbol.text
                if text is None or not contract.is_enrollment(text) or text in refused:
                    continue  # a visitor's code, or a QR already judged: not ours to answer
                if time.monotonic() < faulted.get(text, 0.0):
                    continue
                try:
                    token = contract.parse_enrollment(text, keyring, clock())
                    enrolled = _try(config, token, text, ca_pem)
                except Refusal as refusal:
                    refused.add(text)
                    leds.show(Feedback.REFUSED)
                    report(f"enrollment code refused ({refusal.code}): {refusal.reason}")
                    continue
                except _ServerRefused as server_no:
                    refused.add(text)
                    leds.show(Feedback.REFUSED)
                    report(f"the server refused ({server_no.code}): {server_no.reason}")
                    continue
                except EnrollmentError as exc:
                    faulted[text] = time.monotonic() + _RETRY_AFTER_FAULT_S
                    leds.show(Feedback.FAULT)
                    report(f"enrollment failed, will retry: {exc}")
                    continue
                leds.show(Feedback.ENROLLED)
                report(f"enrolled as unit {enrolled.unit_id} at venue {enrolled.venue_id}")
                leds.wait_idle(2.0)
                return enrolled
        leds.wait_idle(2.0)
    return None
