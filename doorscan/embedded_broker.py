"""An MQTT broker inside this process (amqtt), for `make demo` where Mosquitto is missing.

Production and tests use Mosquitto; this exists so the demo still runs on a machine
where nobody could install it. It listens on loopback only and allows anonymous
clients, so it must never be used outside a demo.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["EmbeddedBroker"]


class EmbeddedBroker:
    """amqtt running on its own event loop thread."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt", daemon=True)
        self._broker: Any = None

    def start(self) -> EmbeddedBroker:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise RuntimeError(
                "neither mosquitto nor amqtt is installed: apt-get install -y mosquitto "
                "(or .venv/bin/pip install 'amqtt>=0.11')"
            ) from exc
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self._thread.start()

        async def _start() -> Any:
            broker = Broker(config)
            await broker.start()
            return broker

        self._broker = asyncio.run_coroutine_threadsafe(_start(), self._loop).result(15)
        return self

    def close(self) -> None:
        if self._broker is not None:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(15)
            self._broker = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
