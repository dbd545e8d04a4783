"""The domain: who answers a conversation and with what text. No Flask, gevent or gunicorn in here.

``relay`` (who answers, the reply as a stream of ``str``, the listeners of
finished replies), ``routing`` (which upstream and which of its keys a request
tries, by tier, weight and turn), ``hedging`` (waiting on two upstreams at
once when the first is slow to write), ``upstreams`` (the named upstreams of
``UPSTREAMS_PATH``, checked), ``record`` (the typed ``ReplyRecord``: who asked, who
answered, what it cost, how it ended), ``breaker`` (the circuit breaker),
``providers`` (the provider contract and the upstream APIs),
``provider_facts`` (each API's name, settings and defaults, without its code),
``rules`` (the keyword responder and its file checks), ``validation`` (a chat
request's body to messages), ``ui_messages`` (the AI SDK's body of UI messages), ``usage`` (token counts, estimates and
reservations), ``cache_key`` (which questions the reply cache takes for the
same one), ``insights`` (each reply as the owner's entry, its question masked, and the
summary of a period: unanswered questions grouped, with a rule to add) and ``sse`` (a pure
Server-Sent Events decoder).
"""
