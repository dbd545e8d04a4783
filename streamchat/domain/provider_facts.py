"""What the settings need to know of each upstream API, without loading the code that calls it.

Each provider class (``providers.openai``, ``providers.anthropic``) points at its
``ProviderFacts``; the settings table, the "no provider configured" hint and the
configuration docs are generated from them. They live apart from the classes so
that reading the settings imports no HTTP stack: gunicorn's master reads them
before its workers patch ``ssl`` for gevent, and must not import ``requests``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProviderFacts:
    """One upstream API's name, its three settings and their defaults."""

    name: str  # in LLM_PROVIDERS, X-Terminal-Provider, the logs and metrics
    title: str  # how the docs and errors name the API, e.g. "an OpenAI-compatible API"
    env_prefix: str  # its settings are <PREFIX>_API_KEY, <PREFIX>_BASE_URL and <PREFIX>_MODEL
    default_model: str
    default_base_url: str
    base_url_doc: str = ""  # what the base URL must look like, for the docs
    keyless: bool = False  # setting the base URL alone (no key) configures it: a local server such as Ollama

    @property
    def key_env_var(self) -> str:
        return f"{self.env_prefix}_API_KEY"

    @property
    def base_url_env_var(self) -> str:
        return f"{self.env_prefix}_BASE_URL"

    @property
    def model_env_var(self) -> str:
        return f"{self.env_prefix}_MODEL"


OPENAI = ProviderFacts(
    name="openai", title="an OpenAI-compatible API", env_prefix="OPENAI", default_model="gpt-4o-mini",
    default_base_url="https://api.openai.com/v1", keyless=True,
    base_url_doc=("Base URL including `/v1`. Setting it without a key enables keyless local servers "
                  "(Ollama `http://127.0.0.1:11434/v1`, llama.cpp, vLLM)."))
ANTHROPIC = ProviderFacts(
    name="anthropic", title="the Anthropic Messages API", env_prefix="ANTHROPIC", default_model="claude-haiku-4-5",
    default_base_url="https://api.anthropic.com", base_url_doc="Base URL, without `/v1`.")

#: Every upstream API the service can call, in the default order of the chain.
PROVIDER_FACTS: tuple[ProviderFacts, ...] = (OPENAI, ANTHROPIC)
FACTS_BY_NAME: dict[str, ProviderFacts] = {facts.name: facts for facts in PROVIDER_FACTS}
