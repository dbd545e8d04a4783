"""Test doubles that are also demo tools: the fake upstream server and an in-process fake provider.

Not part of the running service: nothing outside the tests, the benchmark and
``./run --fake`` imports them.
"""
