"""Read and validate every setting, from the environment, in one place: the one source of every setting.

Each setting is one attribute of ``Settings``, declared with its type, how to
parse it, its default and a sentence for the docs; its environment variable is
its name in capitals. ``SETTINGS`` lists them as rows (``Setting``) for the
launcher, ``gunicorn.conf.py``, the worker, the app and the generated
configuration docs alike. ``load_settings()`` parses them all at start-up and
raises ``ConfigError`` naming the variable and how to fix it, so a typo fails
the deploy instead of the first request.

The ``.env`` file is read by ``read_env_file()``, once: the launcher reads it
and hands its values on in the environment.

This module imports no HTTP stack (gunicorn's master reads the server's
settings before its workers patch ``ssl`` for gevent).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Mapping

from .domain.provider_facts import FACTS_BY_NAME, PROVIDER_FACTS, ProviderFacts
from .domain.upstreams import Upstream, UpstreamsError, load_upstreams

API_KEY = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an HTTP header carries as is


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _text(raw: str) -> str:
    try:
        raw.encode("utf-8")  # bytes that are not UTF-8 reach os.environ as lone surrogates
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8") from None
    return raw


def _api_key(raw: str) -> str:
    # It goes into an HTTP header: a curly quote or a no-break space pasted with it would fail every
    # request inside http.client; say so at start-up instead.
    if raw and not API_KEY.fullmatch(raw):
        raise ValueError("must be printable ASCII with no spaces (was a character pasted with it?)")
    return raw


def _number(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("is not a number") from None


def _whole_number(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("is not a whole number") from None


def _seconds(raw: str) -> float:
    value = _number(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_seconds(raw: str) -> float:
    value = _number(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be zero or a positive number of seconds")
    return value


def _positive_int(raw: str) -> int:
    value = _whole_number(raw)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _non_negative_int(raw: str) -> int:
    value = _whole_number(raw)
    if value < 0:
        raise ValueError("must be zero or a positive whole number")
    return value


def _admin_token(raw: str) -> str:
    if raw and len(_api_key(raw)) < 16:
        raise ValueError("must be at least 16 characters: it is all that guards the visitors' questions")
    return raw


def _temperature(raw: str) -> float | None:
    if raw == "":
        return None
    value = _number(raw)
    if not 0 <= value <= 2:
        raise ValueError("must be between 0 and 2")
    return value


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _url(raw: str) -> str:
    if not re.match(r"^https?://[^/\s]+", raw):
        raise ValueError("must be an http:// or https:// URL")
    return raw.rstrip("/")


def _provider_list(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip().lower() for name in raw.split(",") if name.strip())
    unknown = [name for name in names if name not in FACTS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown provider {unknown[0]!r}; known: {', '.join(FACTS_BY_NAME)}")
    if len(set(names)) != len(names):
        raise ValueError("names a provider twice")
    return names


def _limit_string(raw: str) -> str:
    # Parsed for real by flask-limiter; here we only reject the obvious typos early. Imported here: limits
    # imports asyncio, and so ssl, which gunicorn's master must not (see the module's docstring).
    from limits import parse_many

    if raw.strip().lower() == "off":
        return ""
    parse_many(raw)
    return raw.strip()


def _redis_url(raw: str) -> str:
    if raw and not raw.startswith(("redis://", "rediss://")):
        raise ValueError("must start with redis:// or rediss:// (TLS)")
    return _text(raw)


def _service_keys(raw: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in raw.split(",") if key.strip())
    for key in keys:
        if not API_KEY.fullmatch(key):
            raise ValueError("each key must be printable ASCII with no spaces")
        if len(key) < 16:
            raise ValueError("each key must be at least 16 characters: it is all that guards a paid model")
    return keys


def _suggestions(raw: str) -> tuple[str, ...]:
    texts = tuple(text.strip() for text in _text(raw).split("|") if text.strip())
    if len(texts) > 6 or any(len(text) > 200 for text in texts):
        raise ValueError("at most 6 questions of at most 200 characters, separated by |")
    return texts


def _budget(raw: str) -> str:
    return _limit_string(raw) if raw else ""


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ValueError(f"{origin!r} is not an origin like https://example.com")
    return origins


def _port(raw: str) -> int:
    value = _whole_number(raw)
    if not 1 <= value <= 65535:
        raise ValueError("must be a port number, 1-65535")
    return value


def _host(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.:\[\]_-]+", raw):
        raise ValueError("must be an IP address or a host name")
    return raw


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return raw.lower()
    return parse


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: an environment variable, how to parse it, its default and its doc."""

    env: str
    parse: Callable[[str], Any]
    default: str | None
    doc: str
    secret: bool = False
    example: str = ""  # a valid value for the error message, when the default is none

    @property
    def attr(self) -> str:
        return self.env.lower()

    def example_line(self) -> str:
        """Return a valid assignment to show beside an error, e.g. ``CHAT_MAX_MESSAGES=50``."""
        return f"{self.env}={self.example or self.default or ''}"


def _setting(parse: Callable[[str], Any], default: str | None, doc: str, *, secret: bool = False,
             example: str = "") -> Any:
    """Declare a ``Settings`` attribute, read from the environment variable of its name in capitals."""
    return field(repr=not secret, metadata={"setting": (parse, default, doc, secret, example)})


def _key_of(facts: ProviderFacts) -> Any:
    return _setting(_api_key, "", f"Key for {facts.title}.", secret=True, example="the-key-as-issued")


def _base_url_of(facts: ProviderFacts) -> Any:
    return _setting(_url, facts.default_base_url, facts.base_url_doc or f"Base URL of {facts.title}.")


def _model_of(facts: ProviderFacts) -> Any:
    return _setting(_text, facts.default_model, f"Model name sent to {facts.title}.")


OPENAI, ANTHROPIC = FACTS_BY_NAME["openai"], FACTS_BY_NAME["anthropic"]


@dataclass(frozen=True)
class Settings:
    """Every setting, parsed; built by ``load_settings()``. The attribute ``chat_title`` is ``CHAT_TITLE``."""

    openai_api_key: str = _key_of(OPENAI)
    openai_base_url: str = _base_url_of(OPENAI)
    openai_model: str = _model_of(OPENAI)
    anthropic_api_key: str = _key_of(ANTHROPIC)
    anthropic_base_url: str = _base_url_of(ANTHROPIC)
    anthropic_model: str = _model_of(ANTHROPIC)
    upstreams_path: str = _setting(
        _text, "", "A YAML file of named upstreams: several models and keys, tiers and weights "
        "([named upstreams](#named-upstreams)). Without it the `OPENAI_*` and `ANTHROPIC_*` settings describe two "
        "upstreams named `openai` and `anthropic`; setting both forms is an error.", example="upstreams.yaml")
    # None in the table (no default): load_settings fills in every configured provider.
    llm_providers: tuple[str, ...] = _setting(
        _provider_list, None,
        f"Comma-separated order of providers to try, e.g. `{','.join(reversed(FACTS_BY_NAME))}`. "
        f"Default: every configured provider, in the order {', '.join(FACTS_BY_NAME)}.",
        example=",".join(FACTS_BY_NAME))
    system_prompt: str = _setting(_text, "", "The system prompt (the client can never send one).",
                                  example="You are the assistant of Example Shop.")
    system_prompt_file: str = _setting(_text, "", "Read the system prompt from this file instead.",
                                       example="prompt.txt")
    llm_max_tokens: int = _setting(_positive_int, "1024", "Maximum tokens per reply.")
    llm_temperature: float | None = _setting(
        _temperature, "", "Sampling temperature, 0-2; empty for the provider's default.", example="0.7")
    llm_connect_timeout: float = _setting(_seconds, "5", "Seconds to open the upstream connection.")
    llm_first_token_timeout: float = _setting(
        _seconds, "12", "Seconds to wait for the first text before falling back (Heroku drops silent requests at 30 s).")
    llm_hedge_after: float = _setting(
        _non_negative_seconds, "0", "Seconds the chosen upstream may take to write its first text before the next "
        "candidate is started beside it; the first to write answers and the other is closed at once (one hedge "
        "per reply; it reserves tokens like any call). `0`: off.", example="1.5")
    llm_idle_timeout: float = _setting(_seconds, "20", "Seconds of upstream silence tolerated between chunks.")
    llm_max_duration: float = _setting(_seconds, "300", "Seconds after which a reply is cut short.")
    llm_cooldown: float = _setting(
        _non_negative_seconds, "30",
        "Seconds a provider is skipped after a 429, 5xx or timeout (longer if `retry-after` says so).")
    llm_pool_size: int = _setting(_positive_int, "1000", "Upstream connections kept open per provider and worker.")
    llm_warm_every: float = _setting(
        _non_negative_seconds, "15", "Seconds between each worker's looks at every upstream it may call: with no "
        "idle connection used within that time, it opens one ahead of need (TCP and TLS, no request), so the first "
        "visitor after a quiet spell skips the handshake. Providers close idle connections after about a minute; "
        "a ready connection is at most twice this old. None for an upstream cooling down or while draining. `0`: off.")
    client_timeout: float = _setting(
        _seconds, "60", "Seconds a client may take to send its request body (408 after), and may read nothing while "
        "its reply waits to be sent (then its stream is closed).")
    client_header_timeout: float = _setting(
        _seconds, "10", "Seconds a client may take to send a request's head, from its first byte (then its connection "
        "is closed); a kept-alive connection may idle between requests for gunicorn's keep-alive time (75 s).")
    chat_max_messages: int = _setting(_positive_int, "50", "Most messages accepted in one conversation.")
    chat_max_chars: int = _setting(
        _positive_int, "32000", "Most characters accepted across all messages, counting two for each break between "
        "consecutive messages of one role (they are sent joined to APIs that want roles to alternate).")
    chat_max_body_bytes: int = _setting(_positive_int, "262144", "Largest request body in bytes (413 above it).")
    rules_path: str = _setting(_text, "rules.yaml", "The keyword rules used when no model answers.")
    fallback_word_delay: float = _setting(
        _non_negative_seconds, "0",
        "Optional typing pace for fallback replies, seconds per word group (0 = as fast as possible).")
    chat_rate_limit: str = _setting(
        _limit_string, "20/minute;300/day",
        "Hard per-client limit on `/api/chat` (`off` disables it, e.g. behind a gateway that limits; with no "
        "budget set either, flask-limiter is not run at all).")
    redis_url: str = _setting(
        _redis_url, "", "The one Redis every worker and instance shares (`redis://` or `rediss://`): rate limits, "
        "budgets and the circuit breaker. Empty: each worker process keeps its own.",
        example="redis://localhost:6379/0")
    redis_timeout: float = _setting(
        _seconds, "0.5",
        "Seconds any Redis call may take; past it the worker carries on without Redis (and says so in `/healthz`).")
    resume_ttl: float = _setting(
        _non_negative_seconds, "600", "Seconds a reply's record (`X-Stream-Id`) can still be read or resumed after "
        "the reply ends; `0` records nothing (no stream ids).")
    resume_grace: float = _setting(
        _non_negative_seconds, "10", "Seconds a reply goes on being produced and recorded after its client left, "
        "for the client to come back; `0` closes the upstream at once.")
    reply_cache_ttl: float = _setting(
        _non_negative_seconds, "3600", "Seconds a complete live reply answers the same question again (a hit: no model "
        "call, no tokens), and identical questions asked while it streams follow it (joined). Kept in `REDIS_URL` "
        "(every instance), else in each worker's memory (16 MB, oldest out first). `0`: off.")
    reply_cache_turns: int = _setting(
        _positive_int, "1", "Most user messages a conversation may have for its reply to be cached: `1` caches "
        "first questions only (the suggestion buttons, the usual openers).")
    # Empty in the table: load_settings fills in REDIS_URL, else memory://.
    ratelimit_storage_uri: str = _setting(
        _text, "", "Where rate limits and budgets count, if not in `REDIS_URL`: `memory://` counts per worker "
        "process; `redis://host:6379` shares counts across workers and machines. Default: `REDIS_URL`, else "
        "`memory://`.", example="memory://")
    llm_budget_per_client: str = _setting(
        _budget, "", "Soft per-client budget of live-model replies, e.g. `50/day`; above it the rules answer.",
        example="50/day")
    llm_budget_global: str = _setting(
        _budget, "", "Soft budget of live-model replies for the whole service, e.g. `5000/day`.", example="5000/day")
    llm_token_budget_per_client: str = _setting(
        _budget, "", "Tokens (prompt and reply) one client may spend on live models, e.g. `20000/day`; reserved "
        "before a model is called, settled on what the reply used; past it the rules answer.", example="20000/day")
    llm_token_budget_global: str = _setting(
        _budget, "", "Tokens the whole service may spend on live models, e.g. `2000000/day`.", example="2000000/day")
    service_api_keys: tuple[str, ...] = _setting(
        _service_keys, "", "Comma-separated secrets your own backends send as `Authorization: Bearer <key>` to the "
        "OpenAI-compatible `/v1` API; empty: `/v1` answers 404. Each key is its own client for limits and budgets.",
        secret=True, example="a-random-secret-of-32-characters")
    api_rate_limit: str = _setting(
        _limit_string, "600/minute", "Hard per-key limit on `/v1/chat/completions` (`off` disables it).")
    trusted_proxies: int = _setting(
        _non_negative_int, "0", "Number of proxies in front of the app whose `X-Forwarded-For` is trusted (Heroku: 1).")
    cors_origins: tuple[str, ...] = _setting(
        _origins, "", "Comma-separated origins allowed to call the API from a browser.", example="https://example.com")
    embed_origins: tuple[str, ...] = _setting(
        _origins, "", "Comma-separated origins of the sites that embed the chat (`widget.js`, or the page in an "
        "iframe): they may call the API from a browser and frame the page.", example="https://shop.example.com")
    chat_title: str = _setting(_text, "Assistant", "The chat's title, on the page and in the widget.")
    chat_greeting: str = _setting(_text, "Ask anything. Replies appear as they are written.",
                                  "What the chat says before the first message.")
    chat_suggestions: tuple[str, ...] = _setting(
        _suggestions, "", "Up to 6 suggested first questions, separated by `|`, shown as buttons before the first "
        "message.", example="What are your opening hours?|How do I return an item?")
    log_user_text: bool = _setting(_flag, "false", "Log the user's last message (debugging only).")
    insights_retention_days: int = _setting(
        _non_negative_int, "0", "Days each reply's insights entry is kept for the owner's page (`/admin`) and "
        "`./run insights`: when, which API, mode and reason, upstream, rule, the visitor's latest question with "
        "e-mail addresses, phone numbers, long digit runs and credentials masked, length, tokens, time to first "
        "byte, how it ended, the visitor's rating. In `REDIS_URL` when set, else in `INSIGHTS_PATH`. `0`: nothing "
        "is stored and the rating buttons are not shown.", example="30")
    insights_path: str = _setting(
        _text, "insights.jsonl", "Without `REDIS_URL`: the file insights are kept in (one JSON line per entry; "
        "every worker of this machine appends to it, and it survives a restart).")
    insights_max_entries: int = _setting(
        _positive_int, "50000", "Most insights entries kept (about 0.5 KB each); the oldest go first.")
    admin_token: str = _setting(
        _admin_token, "", "Turns on the owner's page at `/admin` (insights, unanswered questions, rules to add), "
        "signed in with this token (at least 16 characters); unset: `/admin` answers 404.", secret=True,
        example="a-long-random-string")
    log_format: str = _setting(
        _one_of("text", "json"), "text",
        "`text`: one readable `key=value` line per request; `json`: one JSON object per line, same fields.")
    metrics_token: str = _setting(
        _api_key, "", "Turns on `GET /metrics` (Prometheus), which then needs `Authorization: Bearer <this token>`.",
        secret=True, example="a-long-random-string")
    # The server's own (SERVER_SETTINGS): read by gunicorn.conf.py in gunicorn's master, and by the worker.
    host: str = _setting(_host, "0.0.0.0", "Address the server listens on (`./run` uses `127.0.0.1`).")
    port: int = _setting(_port, "8000", "Port the server listens on (Heroku sets it).")
    web_concurrency: int = _setting(
        _positive_int, "1", "Worker processes; each holds thousands of streams. Heroku sets it from the dyno size.")
    worker_connections: int = _setting(_positive_int, "10000", "Connections one worker holds at most.")
    drain_seconds: float = _setting(
        _seconds, "20", "On SIGTERM, seconds open replies may take to finish; then they end with a restarting notice. "
        "Keep it 5 s under the platform's kill (Heroku: 30 s).")
    gunicorn_log_level: str = _setting(
        _one_of("debug", "info", "warning", "error", "critical"), "info", "The server's own log level.")
    #: Derived, not read: the upstreams, from UPSTREAMS_PATH or else from the OPENAI_* and ANTHROPIC_* settings.
    upstreams: tuple[Upstream, ...] = ()
    #: The variables set in the environment (not left to their defaults).
    explicitly_set: frozenset[str] = frozenset()

    def is_set(self, env: str) -> bool:
        return env in self.explicitly_set


#: Every setting, in the order of ``Settings``'s attributes (and of the configuration docs).
SETTINGS: tuple[Setting, ...] = tuple(Setting(f.name.upper(), *f.metadata["setting"])
                                      for f in fields(Settings) if "setting" in f.metadata)
#: What gunicorn's master reads (``gunicorn.conf.py``), through ``parse_settings``.
SERVER_SETTINGS = ("HOST", "PORT", "WEB_CONCURRENCY", "WORKER_CONNECTIONS", "DRAIN_SECONDS", "GUNICORN_LOG_LEVEL",
                   "LOG_FORMAT", "METRICS_TOKEN")
_BY_ENV = {setting.env: setting for setting in SETTINGS}

_env_file_read = False


def read_env_file() -> None:
    """Add the ``.env`` file's variables to the environment, never over ones already set; ``ENV_FILE=""``: none.

    Once per process, and once for the service: the launcher reads it, then sets ``ENV_FILE=""`` for
    gunicorn and its workers, which find its values in the environment they inherit.
    """
    global _env_file_read
    env_file = os.environ.get("ENV_FILE", ".env")
    if _env_file_read or not env_file:
        return
    _env_file_read = True
    from dotenv import load_dotenv

    load_dotenv(env_file, override=False)


def parse_settings(envs: Iterable[str], environ: Mapping[str, str] | None = None) -> SimpleNamespace:
    """Parse the settings named by ``envs`` alone (their attributes, e.g. ``.port``), raising ConfigError."""
    environ = os.environ if environ is None else environ
    return SimpleNamespace(**{_BY_ENV[env].attr: _parse(_BY_ENV[env], environ.get(env)) for env in envs})


def _parse(setting: Setting, raw: str | None) -> Any:
    if raw is None or raw.strip() == "":
        raw = setting.default
    if raw is None:
        return None
    try:
        return setting.parse(raw.strip())
    except (ValueError, TypeError) as exc:
        shown = "***" if setting.secret else repr(raw)
        raise ConfigError(f"{setting.env}={shown} is invalid: {exc} (for example {setting.example_line()})") from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse every setting from ``environ`` (default ``os.environ``), raising ConfigError on the first bad one."""
    environ = os.environ if environ is None else environ
    values = {setting.attr: _parse(setting, environ.get(setting.env)) for setting in SETTINGS}
    explicitly_set = {setting.env for setting in SETTINGS if (environ.get(setting.env) or "").strip()}

    if values["system_prompt"] and values["system_prompt_file"]:
        raise ConfigError("Set SYSTEM_PROMPT or SYSTEM_PROMPT_FILE, not both.")
    if values["system_prompt_file"]:
        try:
            values["system_prompt"] = Path(values["system_prompt_file"]).read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"SYSTEM_PROMPT_FILE cannot be read: {exc}") from None

    values["ratelimit_storage_uri"] = values["ratelimit_storage_uri"] or values["redis_url"] or "memory://"
    if values["upstreams_path"]:
        upstreams = _upstreams_from_file(values["upstreams_path"], environ, explicitly_set)
        values["llm_providers"] = ()
    else:
        configured = _configured_providers(values, explicitly_set)
        if values["llm_providers"] is None:
            values["llm_providers"] = configured
        else:
            missing = [name for name in values["llm_providers"] if name not in configured]
            if missing:
                raise ConfigError(f"LLM_PROVIDERS names {missing[0]!r}, which is not configured: "
                                  f"set {configure_hint(FACTS_BY_NAME[missing[0]])}.")
        upstreams = _upstreams_from_settings(values)
    return Settings(**values, upstreams=upstreams, explicitly_set=frozenset(explicitly_set))


#: The settings that describe upstreams without a file: with UPSTREAMS_PATH, none of them may be set.
LEGACY_UPSTREAM_SETTINGS = tuple(env for facts in PROVIDER_FACTS
                                 for env in (facts.key_env_var, facts.base_url_env_var, facts.model_env_var)
                                 ) + ("LLM_PROVIDERS",)


def _upstreams_from_file(path: str, environ: Mapping[str, str], explicitly_set: set[str]) -> tuple[Upstream, ...]:
    both = [env for env in LEGACY_UPSTREAM_SETTINGS if env in explicitly_set]
    if both:
        raise ConfigError(f"UPSTREAMS_PATH and {both[0]} are both set: keep UPSTREAMS_PATH and describe that "
                          f"upstream in {path}, or unset UPSTREAMS_PATH to keep the {', '.join(both)} settings.")
    try:
        return load_upstreams(path, environ)
    except UpstreamsError as exc:
        raise ConfigError(str(exc)) from None


def _upstreams_from_settings(values: Mapping[str, Any]) -> tuple[Upstream, ...]:
    # Today's variables, as they always worked: one upstream per configured provider, in LLM_PROVIDERS order.
    upstreams = []
    for tier, name in enumerate(values["llm_providers"], 1):
        facts = FACTS_BY_NAME[name]
        key = values[facts.key_env_var.lower()]
        upstreams.append(Upstream(name=name, protocol=name, base_url=values[facts.base_url_env_var.lower()],
                                  model=values[facts.model_env_var.lower()] or facts.default_model,
                                  api_keys=(key,) if key else (), tier=tier, secrets=(key,) if key else ()))
    return tuple(upstreams)


def _configured_providers(values: Mapping[str, Any], explicitly_set: set[str]) -> tuple[str, ...]:
    # A provider is configured by its key, or, for one that may run keyless (a local server such as
    # Ollama, llama.cpp, vLLM), by its base URL alone.
    return tuple(facts.name for facts in PROVIDER_FACTS if values[facts.key_env_var.lower()]
                 or (facts.keyless and facts.base_url_env_var in explicitly_set))


def configure_hint(facts: ProviderFacts) -> str:
    """Return what to set to configure a provider, e.g. "OPENAI_API_KEY or OPENAI_BASE_URL"."""
    return f"{facts.key_env_var} or {facts.base_url_env_var}" if facts.keyless else facts.key_env_var


def no_provider_hint() -> str:
    """Return the sentence the log shows when no provider is configured."""
    return "none configured, the rules answer every request: set " + " or ".join(
        configure_hint(facts) for facts in PROVIDER_FACTS)


def settings_table_markdown() -> str:
    """Render the settings as the configuration docs' table."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(none)"
        rows.append(f"| `{setting.env}` | {default} | {setting.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table_markdown())
