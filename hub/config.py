"""The hub's config file: one typed place for what ~40 flags used to say, e.g.
``/etc/doorscan-hub/hub.toml``::

    [database]
    url = "/var/lib/doorscan-hub/hub.db"          # or postgresql://hub@db/doorscan
    vault_key = "/etc/doorscan-hub/hub-vault.key"

    [broker]
    host = "hub.example"
    port = 8883
    ca_file = "/etc/doorscan-hub/ca.pem"
    cert_file = "/etc/doorscan-hub/hub-cert.pem"
    key_file = "/etc/doorscan-hub/hub-key.pem"

    [keys]
    seal_key = "credential:hub-seal.key"          # systemd LoadCredential=
    card_keys = ["/etc/doorscan-hub/card-signing.pub.pem"]

    [http]
    listen = "0.0.0.0:8443"
    cert_file = "/etc/doorscan-hub/http-cert.pem"
    key_file = "/etc/doorscan-hub/http-key.pem"

Every `doorscan-hub` command takes ``--config FILE`` (or ``$DOORSCAN_HUB_CONFIG``); a
flag given on the command line wins over the file. Unknown keys are refused: a typo
(``seal-key`` for ``seal_key``) would otherwise be a key silently not used, which is how
a hub dead-letters every sealed scan.

Secrets are never values in the file, only paths to them: a path relative to the file's
folder, an absolute path, or ``credential:NAME`` for a systemd credential
(``LoadCredential=NAME:/path`` in the unit; read from ``$CREDENTIALS_DIRECTORY``, which
only the service can read).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from doorscan.errors import DoorscanError
from doorscan.netaddr import is_loopback
from doorscan.wire.limits import RATE_MAX_SCANS
from hub.retention import DEFAULT_RETENTION_DAYS

__all__ = [
    "CREDENTIAL_PREFIX",
    "ENV_CONFIG",
    "BrokerSettings",
    "ConfigFileError",
    "DatabaseSettings",
    "HttpSettings",
    "HubConfig",
    "IngestSettings",
    "KeySettings",
    "build_config",
    "http_problem",
    "load_hub_config",
    "read_config_file",
    "resolve_path",
    "shown_url",
]

ENV_CONFIG = "DOORSCAN_HUB_CONFIG"
CREDENTIAL_PREFIX = "credential:"
DEFAULT_HTTP = "127.0.0.1:8080"


class ConfigFileError(DoorscanError, ValueError):
    """The config file cannot be read or says something refused; the message names where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseSettings(_Strict):
    url: str = Field("hub.db", description="the hub database: a path or a postgresql:// URL")
    vault_key: Path | None = Field(
        None, description="the vault key that opens the identities (`doorscan-hub init-vault`)"
    )


class BrokerSettings(_Strict):
    host: str | None = Field(
        None, description="the MQTT broker; no default: a hub must say which broker it serves"
    )
    port: int | None = Field(
        None, ge=1, le=65535, description="default 8883 with TLS files, 1883 without"
    )
    client_id: str = Field("doorscan-hub", description="MQTT client id (persistent session)")
    ca_file: Path | None = Field(None, description="the fleet CA (`provisioning broker-files`)")
    cert_file: Path | None = Field(None, description="the hub's client certificate")
    key_file: Path | None = Field(None, description="the hub's client private key")
    insecure: bool = Field(
        False, description="allow plain MQTT (no TLS) to a broker that is not on this machine"
    )
    config_cert_file: Path | None = Field(
        None,
        description="`unit-config`'s own client certificate (hub-config-cert.pem): with the "
        "hub's, it would take the running hub's place on the broker",
    )
    config_key_file: Path | None = Field(None, description="its private key")

    @model_validator(mode="after")
    def _tls_together(self) -> BrokerSettings:
        given = [f is not None for f in (self.ca_file, self.cert_file, self.key_file)]
        if any(given) and not all(given):
            raise ValueError("broker.ca_file, broker.cert_file and broker.key_file go together")
        if (self.config_cert_file is None) != (self.config_key_file is None):
            raise ValueError("broker.config_cert_file and broker.config_key_file go together")
        return self

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else (8883 if self.tls else 1883)


class KeySettings(_Strict):
    seal_key: Path | None = Field(
        None, description="the hub's PRIVATE sealing key: opens the scans units seal"
    )
    card_keys: list[Path] = Field(
        default_factory=list, description="visitor-card public keys the hub trusts"
    )


class HttpSettings(_Strict):
    listen: str | None = Field(
        None, description=f"serve the API and dashboard at HOST:PORT (web: {DEFAULT_HTTP})"
    )
    cert_file: Path | None = Field(None, description="HTTPS certificate (PEM, with its chain)")
    key_file: Path | None = Field(None, description="HTTPS private key (PEM)")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="reverse proxies whose X-Forwarded-For/-Proto headers are believed",
    )
    insecure: bool = Field(False, description="allow plain HTTP on an address that is not loopback")
    releases_dir: Path | None = Field(
        None,
        description="serve this folder at /releases/: provisioning's signed update repository",
    )

    @model_validator(mode="after")
    def _pair(self) -> HttpSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("http.cert_file and http.key_file go together")
        if self.listen is not None:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"http.listen {self.listen!r} is not HOST:PORT")
        return self


class IngestSettings(_Strict):
    workers: int = Field(1, ge=1, le=64, description="worker processes on a shared subscription")
    max_scans_per_minute: int = Field(
        RATE_MAX_SCANS, ge=0, description="per unit, before the rest are held apart (0: none)"
    )
    report_every_s: float = Field(60.0, ge=0, description="log the counters this often")


class RetentionSettings(_Strict):
    days: int = Field(
        DEFAULT_RETENTION_DAYS, ge=1, le=3650, description="scans older than this are purged"
    )


class LoggingSettings(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class HubConfig(_Strict):
    """Everything a running hub needs; `load_hub_config` reads it from TOML."""

    database: DatabaseSettings = DatabaseSettings()
    broker: BrokerSettings = BrokerSettings()
    keys: KeySettings = KeySettings()
    http: HttpSettings = HttpSettings()
    ingest: IngestSettings = IngestSettings()
    retention: RetentionSettings = RetentionSettings()
    logging: LoggingSettings = LoggingSettings()


def shown_url(url: str) -> str:
    """A database URL as it may be printed: without the password it might carry."""
    if "://" in url and "@" in url:
        scheme, _, rest = url.partition("://")
        credentials, _, host = rest.rpartition("@")
        return f"{scheme}://{credentials.partition(':')[0]}@{host}"
    return url


def http_problem(http: HttpSettings) -> str | None:
    """Why the hub must not serve HTTP like this, or None: plain HTTP on an address other
    machines reach, without ``insecure``."""
    if http.listen is None or http.cert_file is not None or http.insecure:
        return None
    host = http.listen.rpartition(":")[0].strip("[]")
    if is_loopback(host):
        return None
    return (
        f"plain HTTP on {http.listen}: passwords and identities would cross the network "
        "unencrypted; give http.cert_file and http.key_file (--http-cert, --http-key), "
        "listen on 127.0.0.1 behind a TLS proxy (with --trusted-proxy), or set "
        "http.insecure = true (--http-insecure) to mean it"
    )


def resolve_path(value: str | Path, base: Path | None) -> Path:
    """A path as the config file means it: ``credential:NAME`` from systemd's credentials
    folder (as written when there is none), a relative path from the config file's folder
    (`base`), else as written."""
    text = str(value)
    if text.startswith(CREDENTIAL_PREFIX):
        folder = os.environ.get("CREDENTIALS_DIRECTORY", "")
        # Outside the service there is no such folder: the path stays as written, and
        # fails (by name) only if this command reads that file, so that `stats` or a
        # flag given instead still work.
        return Path(folder) / text.removeprefix(CREDENTIAL_PREFIX) if folder else Path(text)
    path = Path(text)
    return path if path.is_absolute() or base is None else base / path


_PATH_FIELDS = {
    ("database", "vault_key"),
    ("broker", "ca_file"),
    ("broker", "cert_file"),
    ("broker", "key_file"),
    ("broker", "config_cert_file"),
    ("broker", "config_key_file"),
    ("keys", "seal_key"),
    ("http", "cert_file"),
    ("http", "key_file"),
    ("http", "releases_dir"),
}


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve the file's path values against its folder, before the flags are laid over."""
    out = {
        section: dict(values) if isinstance(values, dict) else values
        for section, values in data.items()
    }
    for section, key in _PATH_FIELDS:
        values = out.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str):
            values[key] = str(resolve_path(values[key], base))
    keys = out.get("keys")
    if isinstance(keys, dict) and isinstance(keys.get("card_keys"), list):
        keys["card_keys"] = [
            str(resolve_path(p, base)) if isinstance(p, str) else p for p in keys["card_keys"]
        ]
    url = out.get("database", {}).get("url") if isinstance(out.get("database"), dict) else None
    if isinstance(url, str) and "://" not in url and url != ":memory:":
        out["database"]["url"] = str(resolve_path(url, base))
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's tables, paths resolved; `ConfigFileError` if it cannot be read."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigFileError(f"cannot read the config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path} is not valid TOML: {exc}") from None
    return _resolve_paths(data, path.resolve().parent)


def build_config(data: dict[str, Any], source: str) -> HubConfig:
    """`data` (tables of the file, flags laid over) as a `HubConfig`, or one clear error
    naming each refused key."""
    try:
        return HubConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'value'}: "
            + (
                "unknown key (not a hub setting)"
                if err["type"] == "extra_forbidden"
                else err["msg"]
            )
            for err in exc.errors()
        )
        raise ConfigFileError(f"{source}: {problems}") from None


def load_hub_config(path: Path) -> HubConfig:
    """The hub config in `path`, checked; `ConfigFileError` says what is wrong and where."""
    return build_config(read_config_file(path), str(path))
