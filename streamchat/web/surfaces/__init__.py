"""The HTTP surfaces: one blueprint per module, each a parser in front of the reply path and a framer behind it.

``page`` (the chat page at ``/``), ``chat`` (``POST /api/chat`` as text/plain,
and reading a recorded reply again or stopping it), ``openai`` (the
OpenAI-compatible ``/v1``, with its request parser ``openai_request``),
``widget`` (``/widget.js``, the page's chat for any site) and ``admin`` (the
owner's page of insights at ``/admin``, its charts drawn by ``admin_charts``).
"""
