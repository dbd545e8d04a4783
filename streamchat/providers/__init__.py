"""The upstream chat APIs, and the registry that turns settings into an ordered chain of them."""

from __future__ import annotations

from ..config import Settings
from .anthropic import AnthropicMessages
from .base import Provider, Timeouts, new_session
from .openai import OpenAIChat

PROVIDER_CLASSES: dict[str, type[Provider]] = {cls.name: cls for cls in (OpenAIChat, AnthropicMessages)}

__all__ = ["AnthropicMessages", "OpenAIChat", "Provider", "Timeouts", "build_chain"]


def build_chain(settings: Settings) -> list[Provider]:
    """Return the configured providers in the order they should be tried."""
    timeouts = Timeouts(connect=settings.llm_connect_timeout, first_token=settings.llm_first_token_timeout,
                        idle=settings.llm_idle_timeout, max_duration=settings.llm_max_duration)
    chain = []
    for name in settings.llm_providers:
        cls = PROVIDER_CLASSES[name]
        prefix = name  # settings are named after the provider: openai_api_key, anthropic_model...
        chain.append(cls(
            model=getattr(settings, f"{prefix}_model") or cls.default_model,
            base_url=getattr(settings, f"{prefix}_base_url"),
            api_key=getattr(settings, f"{prefix}_api_key"),
            # One pooled session per provider: connections are reused across requests.
            session=new_session(settings.llm_pool_size, getattr(settings, f"{prefix}_base_url")),
            timeouts=timeouts,
            max_tokens=settings.llm_max_tokens,
            temperature=settings.llm_temperature,
            system_prompt=settings.system_prompt,
        ))
    return chain
