"""The technicians' tools: the fleet's keys, registry, unit configs and visitor cards.

`fleet` holds the home folder (card-signing keys, a TinyDB registry of venues, units
and issued cards, written atomically), `broker_address` the broker's address recorded
in it, `publish` sends the registry and the fleet's public keys to the hub as retained
MQTT messages, and `cli` is `python -m provisioning`. Nothing here runs on a
door unit: the private card key never leaves the technician's machine.
"""
