"""Framing: turning a reply's text and ending into the bytes of one wire format, and the response that carries them.

``text`` (``text/plain``: the page, the widget), ``openai_sse`` (OpenAI's
chunks and whole completion), ``ui_stream`` (the AI SDK's UI message stream), ``response`` (the streamed or whole response and
the ``X-Terminal-*`` headers; the worker's drain may end a streamed body) and
``recorded`` (a reply recorded under an ``X-Stream-Id`` as it streams, read
again from any byte, stopped from anywhere). A framer is a generator over a
``Reply``; a new wire format is a new framer here and a parser in ``surfaces``.
Nothing here reads the request.

Private attributes relied on here: werkzeug's ``Response.get_app_iter`` with
``direct_passthrough`` (``response.StreamingResponse``, documented but subtle).
"""
