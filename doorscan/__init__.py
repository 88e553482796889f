"""doorscan's shared core: the wire contract, the QR payload parsers and visitor cards.

These are the only pieces that the door unit (`device`), the hub (`hub`) and the
technicians' tools (`provisioning`) have in common. Everything else is private to
one of them.
"""

__version__ = "0.1.0"
