"""The running hub, built from one `HubConfig`: keys, store, ingestor, MQTT service, web.

``doorscan-hub serve`` is this object and a loop; tests build the same thing. The parts
start in the order data flows and stop in reverse: the store opens, the ingestor is
made with the keys, the MQTT service connects (registry first, then scans), then the
web thread listens; on the way out the web server finishes its requests before MQTT
stops, and the store closes last.

Use::

    hub = HubAssembly(config)                      # reads the keys: errors here are the config's
    with hub.running(on_key_mismatch=...) as parts:
        parts.service.wait_connected(30)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from doorscan.errors import ConfigError
from hub.config import HubConfig
from hub.ingest import Ingestor
from hub.preflight import load_keys
from hub.service import SHARED_GROUP, HubService, hub_client_factory, worker_client_factory
from hub.store.factory import HubStore, StoreError, open_hub_store
from hub.vault import ENV_VAULT_KEY, Vault
from hub.web.server import WebThread

if TYPE_CHECKING:
    from doorscan.mqtt import TlsFiles
    from hub.web.metrics import HubMetrics

__all__ = ["HubAssembly", "HubParts"]


@dataclass(frozen=True)
class HubParts:
    """The parts of one running hub process."""

    store: HubStore
    ingestor: Ingestor
    service: HubService
    web: WebThread | None


class HubAssembly:
    """Builds one hub process (the whole hub, or worker `worker` of several) from `config`."""

    def __init__(self, config: HubConfig, *, worker: int | None = None) -> None:
        self.config = config
        self.worker = worker
        try:
            self.sealing_key, self.card_keys = load_keys(config)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"keys.seal_key / keys.card_keys: {exc}") from None

    @property
    def client_id(self) -> str:
        base = self.config.broker.client_id
        return base if self.worker is None else f"{base}-{self.worker}"

    def tls(self) -> TlsFiles | None:
        from doorscan.mqtt import TlsFiles  # paho only where the hub connects

        broker = self.config.broker
        if broker.ca_file is None:
            return None
        return TlsFiles(broker.ca_file, broker.cert_file, broker.key_file)

    def open_store(self) -> HubStore:
        path = self.config.database.vault_key
        if path is None:
            raise ConfigError(f"no vault key: set database.vault_key (or ${ENV_VAULT_KEY})")
        try:
            return open_hub_store(self.config.database.url, vault=Vault.load(path))
        except StoreError as exc:
            raise ConfigError(str(exc)) from None

    @contextmanager
    def running(
        self, *, on_key_mismatch: Callable[[list[str]], None] | None = None
    ) -> Iterator[HubParts]:
        config = self.config
        if config.broker.host is None:
            raise ConfigError("no broker host: set broker.host (or --broker-host)")
        http = config.http
        # The whole hub keeps its persistent session and plain subscription; a worker
        # takes a clean session in the share group (hub.workers says why).
        factory, group = (
            (hub_client_factory, None)
            if self.worker is None
            else (worker_client_factory, SHARED_GROUP)
        )
        with self.open_store() as store:
            metrics = _metrics() if http.listen else None
            ingestor = Ingestor(
                store,
                card_keys=self.card_keys,
                sealing_key=self.sealing_key,
                metrics=metrics,
                max_scans_per_minute=config.ingest.max_scans_per_minute,
                on_key_mismatch=on_key_mismatch,
            )
            with HubService(
                ingestor,
                config.broker.host,
                config.broker.effective_port,
                client_id=self.client_id,
                client_factory=factory,
                tls=self.tls(),
                shared_group=group,
            ) as service:
                web = None
                if http.listen:
                    web = WebThread(
                        store,
                        _address(http.listen),
                        metrics,
                        trusted_proxies=http.trusted_proxies,
                        cert_file=http.cert_file,
                        key_file=http.key_file,
                        releases_dir=http.releases_dir,
                    )
                try:
                    yield HubParts(store, ingestor, service, web)
                finally:
                    if web is not None:
                        web.close()


def _address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _metrics() -> HubMetrics:
    from hub.web.metrics import HubMetrics  # only with HTTP: prometheus_client is not free

    return HubMetrics()
