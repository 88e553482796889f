"""The hub: receives every unit's scans, stores each once, and answers contact traces.

Rooms, in the order a scan passes through them:

* `hub.service`: the MQTT side (persistent session, broker acks only after commit);
* `hub.ingest`: judges each message, stores the good scans, dead-letters the rest;
* `hub.store`: the `Store` interface, `SqliteStore` and `PostgresStore` (scans, registry,
  dead letters, users, reports, the audit log of every read of identities);
* `hub.vault`: the hub's secret, which seals identities at rest and blinds person keys
  for matching;
* `hub.csv_import`: loads check-ins recorded elsewhere, judged by the same parsers;
* `hub.trace`: the contact-trace rule (F1, F2...) on the store's indexed queries;
* `hub.cli`: the `doorscan-hub` command line (``python -m hub``).
"""
