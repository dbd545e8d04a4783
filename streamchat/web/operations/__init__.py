"""Operations: what the people running the service see of it.

``health`` (``/healthz``, ``/readyz`` and the ``/metrics`` route), ``metrics``
(the Prometheus counters, across workers) and ``access`` (request ids, the log
format, one access line per request; a streamed reply's line is written by a
``Relay`` listener when the reply closes).
"""
