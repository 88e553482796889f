"""The door unit's benchmarks: ``make bench`` (``python -m benchmarks``) writes docs/benchmarks.md.

One module per subject (decode speed, degraded codes, real photos, frame-to-feedback
latency, journal commits, a unit's memory). Each returns `report.Figure` rows: a
value next to its baseline measured in the same run, the ratio, and the goal the
project set. Nothing here is a test: figures are reported, never asserted.
"""
