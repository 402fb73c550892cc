"""The pure-Python kernel skewless once ran, kept as a test oracle.

The product's kernel is native (``native/core``); these modules are its former Python
implementation — the 13 aggregation functions, HyperLogLog, the msgpack tile codec of
version 1 and tile arithmetic — against which ``tests/unit/kernel`` checks the native one
value for value. The brute-force reference in ``tests/unit/test_backfill_reference.py``
remains the backfill's oracle.
"""
