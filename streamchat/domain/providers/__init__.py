"""The upstream chat APIs, and the registry that turns settings into an ordered chain of them.

``base`` (the provider contract and the HTTP + SSE loop the APIs share),
``openai`` (OpenAI-compatible chat completions) and ``anthropic`` (Anthropic
Messages); ``build_chain`` here.

Adding a provider is one module declaring an ``HTTPProvider`` subclass, its
``ProviderFacts`` and its three settings (``streamchat.config``), and one line
in ``PROVIDERS``: the hints and the configuration docs follow.
"""

from __future__ import annotations

from typing import Any

from ...transport.session import new_session
from .anthropic import AnthropicMessages
from .base import HTTPProvider, Provider, Timeouts
from .openai import OpenAIChat

#: Every provider the service can call, in the default order of the chain.
PROVIDERS: tuple[type[HTTPProvider], ...] = (OpenAIChat, AnthropicMessages)
PROVIDER_CLASSES: dict[str, type[HTTPProvider]] = {cls.name: cls for cls in PROVIDERS}

__all__ = ["PROVIDERS", "PROVIDER_CLASSES", "AnthropicMessages", "HTTPProvider", "OpenAIChat", "Provider",
           "Timeouts", "build_chain"]


def build_chain(settings: Any) -> list[Provider]:
    """Return a provider for each upstream of ``settings.upstreams``, in the order they should be tried."""
    timeouts = Timeouts(connect=settings.llm_connect_timeout, first_token=settings.llm_first_token_timeout,
                        idle=settings.llm_idle_timeout, max_duration=settings.llm_max_duration)
    chain: list[Provider] = []
    for upstream in sorted(settings.upstreams, key=lambda u: u.tier):  # stable: the file's order within a tier
        chain.append(PROVIDER_CLASSES[upstream.protocol](
            name=upstream.name,
            model=upstream.model,
            base_url=upstream.base_url,
            api_keys=upstream.api_keys,
            extra_headers=dict(upstream.headers),
            tier=upstream.tier,
            weight=upstream.weight,
            # One pooled session per upstream: connections are reused across requests.
            session=new_session(settings.llm_pool_size, upstream.base_url),
            timeouts=timeouts,
            max_tokens=settings.llm_max_tokens,
            temperature=settings.llm_temperature,
            system_prompt=settings.system_prompt,
        ))
    return chain
