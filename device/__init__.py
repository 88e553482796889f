"""The door unit: camera frames in, green or red at the door, durable scans out over MQTT.

Rooms, in the order a scan passes through them: `frames` (FrameSource) -> `decoders`
-> `doorscan.payloads` -> `debounce` -> `journal` (commit) -> `indicators`; then
`mqtt_sync` sends what the journal holds until the hub acknowledges it.
"""
