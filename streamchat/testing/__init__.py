"""Test doubles that are also demo tools, and the harness that starts real processes.

``fake_upstream`` (a real HTTP server speaking the providers' wire formats:
``./run --fake``), ``fake_provider`` (an in-process provider for view tests),
``fuzz`` (fuzzed chat bodies and raw HTTP, for the tests and ``bench/fuzz``)
and ``processes`` (gunicorn, redis-server and nginx on loopback, shared by the
tests and ``bench/``).

Not part of the running service: nothing outside the tests, the benchmark and
``./run --fake`` imports them.
"""
