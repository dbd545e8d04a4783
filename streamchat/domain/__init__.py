"""The domain: who answers a conversation and with what text. No Flask, gevent or gunicorn in here.

``relay`` (who answers, the reply as a stream of ``str``, the listeners of
finished replies), ``breaker`` (the circuit breaker), ``providers`` (the
provider contract and the upstream APIs), ``rules`` (the keyword responder
and its file checks), ``validation`` (a chat request's body to messages) and
``sse`` (a pure Server-Sent Events decoder).
"""
