"""What the author of a second door unit has: docs/wire.md, docs/schema/, and an MQTT client.

Nothing here imports doorscan: messages are plain JSON built from the published JSON
Schema files, checked against them with `jsonschema`, and sent with a plain paho
client. `from_schema` makes hypothesis strategies from a schema file (objects, strings
with patterns, bounded integers, times, references), so the generator reads the same
contract a person would.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from paho.mqtt.enums import CallbackAPIVersion

__all__ = [
    "DOCS",
    "SCHEMAS",
    "Outsider",
    "batch",
    "documented_qr_text",
    "from_schema",
    "recent",
    "scan",
    "time_text",
    "valid",
]

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCHEMAS: dict[str, dict[str, Any]] = {
    path.stem: json.loads(path.read_text(encoding="utf-8"))
    for path in (DOCS / "schema").glob("*.json")
}


def valid(name: str, message: Any) -> bool:
    """Does `message` validate against docs/schema/<name>.json?"""
    return bool(Draft202012Validator(SCHEMAS[name]).is_valid(message))


def documented_qr_text() -> str:
    """The CCCD text of the ScanBatch example in docs/wire.md: a code the hub accepts."""
    text = (DOCS / "wire.md").read_text(encoding="utf-8")
    found = re.search(r'"qr_text": "([^"]+)"', text)
    assert found is not None, "docs/wire.md has no qr_text example"
    return found.group(1)


# -- messages from the schema ---------------------------------------------------------------

_TIMES = st.datetimes(
    min_value=datetime(2019, 6, 1), max_value=datetime(2023, 1, 1), timezones=st.just(UTC)
)


def time_text(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_schema(
    name: str, overrides: dict[str, st.SearchStrategy[Any]] | None = None
) -> st.SearchStrategy[Any]:
    """Messages valid against docs/schema/<name>.json; `overrides` replace a property's
    strategy wherever that property name appears (e.g. real QR texts for ``qr_text``)."""
    root = SCHEMAS[name]
    return _strategy(root, root, overrides or {})


def _strategy(
    node: dict[str, Any], root: dict[str, Any], overrides: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return _strategy(target, root, overrides)
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "anyOf" in node:
        return st.one_of([_strategy(option, root, overrides) for option in node["anyOf"]])
    kind = node.get("type")
    if kind == "object":
        return _object(node, root, overrides)
    if kind == "array":
        items = _strategy(node.get("items", {}), root, overrides)
        return st.lists(
            items, min_size=node.get("minItems", 0), max_size=min(node.get("maxItems", 3), 3)
        )
    if kind == "string":
        if node.get("format") == "date-time":
            return _TIMES.map(time_text)
        if "pattern" in node:
            longest = node.get("maxLength", 64)
            return st.from_regex(node["pattern"], fullmatch=True).filter(
                lambda text: len(text) <= longest
            )
        return st.text(
            min_size=node.get("minLength", 0), max_size=min(node.get("maxLength", 40), 40)
        )
    if kind == "integer":
        return st.integers(node.get("minimum", 0), min(node.get("maximum", 10**6), 10**6))
    if kind == "number":
        low, high = node.get("minimum", -1000.0), node.get("maximum", 1000.0)
        return st.floats(low, high, allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return st.none()


def _object(
    node: dict[str, Any], root: dict[str, Any], overrides: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    required = set(node.get("required", []))
    # "oneOf" of required sets (a scan has qr_text or sealed): exactly one of them.
    choices = [set(o.get("required", [])) for o in node.get("oneOf", []) if "required" in o]
    if choices:
        every = set().union(*choices)

        def one(chosen: set[str]) -> st.SearchStrategy[dict[str, Any]]:
            properties = {
                key: _not_null(sub) if key in chosen else sub
                for key, sub in node.get("properties", {}).items()
                if key in chosen or key not in every
            }
            narrowed = {**node, "oneOf": [], "properties": properties}
            return _object({**narrowed, "required": [*required, *chosen]}, root, overrides)

        return st.sampled_from(choices).flatmap(one)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for key, sub in node.get("properties", {}).items():
        strategy = overrides[key] if key in overrides else _strategy(sub, root, overrides)
        (fields if key in required else optional)[key] = strategy
    return st.fixed_dictionaries(fields, optional=optional).map(
        lambda d: {k: v for k, v in d.items() if v is not None}
    )


def _not_null(node: dict[str, Any]) -> dict[str, Any]:
    options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
    return {**node, "anyOf": options} if options else node


# -- an MQTT client, as any unit author would write it ----------------------------------------


class Outsider:
    """A plain paho client: publish bytes, collect whatever arrives on subscribed topics."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self._lock = threading.Condition()
        self.received: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id
        )
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic, bytes(message.payload)))
            self._lock.notify_all()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        time.sleep(0.1)  # the SUBACK: a plain client does not wait for it either

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(10)

    def answers(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p in self.received if t == topic and p]

    def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def scan(scan_id: str, venue_id: str, at: datetime, qr_text: str) -> dict[str, Any]:
    """One scan as docs/wire.md shows it."""
    return {
        "v": 1,
        "scan_id": scan_id,
        "venue_id": venue_id,
        "scanned_at": time_text(at),
        "clock_trusted": True,
        "qr_text": qr_text,
    }


def batch(
    batch_id: str, unit_id: str, scans: list[dict[str, Any]], rev: int | None = 6
) -> dict[str, Any]:
    """A scan batch as docs/wire.md shows it (revision 6 unless `rev` says otherwise)."""
    message: dict[str, Any] = {"v": 1}
    if rev is not None:
        message["rev"] = rev
    message.update(
        {
            "schema": "doorscan.scan-batch",
            "batch_id": batch_id,
            "unit_id": unit_id,
            "sent_at": time_text(datetime.now(UTC)),
            "scans": scans,
        }
    )
    return message


def recent(minutes: float = 0) -> datetime:
    """A scan time the hub's rules accept: now, less `minutes`, to the millisecond."""
    now = datetime.now(UTC) - timedelta(minutes=minutes)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
