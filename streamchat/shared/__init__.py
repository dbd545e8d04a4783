"""What every worker of every instance shares through Redis, and how each carries on without it.

``outage`` (one warning when a shared store goes away and one when it is back,
retries at most once a second), ``redis`` (the one client built from
``REDIS_URL``, every call bounded by ``REDIS_TIMEOUT``), ``breaker`` (the
circuit breaker, shared through one expiring key per provider and a pub/sub
channel, so skipping a provider costs no round trip), ``token_budget`` (token
reservations and their settlement, in Redis or in memory), ``streams`` (the
one interface of stream records), ``memory_streams`` (records in one
process's memory), ``redis_streams`` (in Redis, written in batches by one
flusher per process), ``reply_cache`` (answers kept as stream records and
found by their question's key, in Redis or in memory) and ``insights_store``
(each reply's insights entry and its rating, in Redis or in a local file).

It imports the domain and nothing of the web layer; the web layer and
``app.py`` import it.
"""
