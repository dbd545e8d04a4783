"""Read and validate every setting, from the environment, in one place.

Each setting is one row of ``SETTINGS``: its environment variable, how to
parse it, its default and a sentence for the README. ``load_settings()``
parses them all at start-up and raises ``ConfigError`` naming the variable
and how to fix it, so a typo fails the deploy instead of the first request.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .domain.providers import PROVIDER_CLASSES, PROVIDERS

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
    unknown = [name for name in names if name not in PROVIDER_CLASSES]
    if unknown:
        raise ValueError(f"unknown provider {unknown[0]!r}; known: {', '.join(PROVIDER_CLASSES)}")
    if len(set(names)) != len(names):
        raise ValueError("names a provider twice")
    return names


def _limit_string(raw: str) -> str:
    # Parsed for real by flask-limiter; here we only reject the obvious typos early.
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


def _provider_settings(cls) -> tuple[Setting, ...]:
    """Return the settings a provider class declares: its key, base URL and model."""
    return (
        Setting(cls.key_env_var, _api_key, "", f"Key for {cls.title}.", secret=True,
                example="the-key-as-issued"),
        Setting(cls.base_url_env_var, _url, cls.default_base_url, cls.base_url_doc or f"Base URL of {cls.title}."),
        Setting(cls.model_env_var, _text, cls.default_model, f"Model name sent to {cls.title}."),
    )


SETTINGS: tuple[Setting, ...] = (
    *(setting for cls in PROVIDERS for setting in _provider_settings(cls)),
    Setting("LLM_PROVIDERS", _provider_list, None,
            f"Comma-separated order of providers to try, e.g. `{','.join(reversed(PROVIDER_CLASSES))}`. "
            f"Default: every configured provider, in the order {', '.join(PROVIDER_CLASSES)}.",
            example=",".join(PROVIDER_CLASSES)),
    Setting("SYSTEM_PROMPT", _text, "", "The system prompt (the client can never send one).",
            example="You are the assistant of Example Shop."),
    Setting("SYSTEM_PROMPT_FILE", _text, "", "Read the system prompt from this file instead.", example="prompt.txt"),
    Setting("LLM_MAX_TOKENS", _positive_int, "1024", "Maximum tokens per reply."),
    Setting("LLM_TEMPERATURE", _temperature, "", "Sampling temperature, 0-2; empty for the provider's default.", example="0.7"),
    Setting("LLM_CONNECT_TIMEOUT", _seconds, "5", "Seconds to open the upstream connection."),
    Setting("LLM_FIRST_TOKEN_TIMEOUT", _seconds, "12",
            "Seconds to wait for the first text before falling back (Heroku drops silent requests at 30 s)."),
    Setting("LLM_IDLE_TIMEOUT", _seconds, "20", "Seconds of upstream silence tolerated between chunks."),
    Setting("LLM_MAX_DURATION", _seconds, "300", "Seconds after which a reply is cut short."),
    Setting("LLM_COOLDOWN", _non_negative_seconds, "30",
            "Seconds a provider is skipped after a 429, 5xx or timeout (longer if `retry-after` says so)."),
    Setting("LLM_POOL_SIZE", _positive_int, "1000", "Upstream connections kept open per provider and worker."),
    Setting("CLIENT_TIMEOUT", _seconds, "60",
            "Seconds a client may take to send its request body (408 after), and may read nothing while its "
            "reply waits to be sent (then its stream is closed)."),
    Setting("CLIENT_HEADER_TIMEOUT", _seconds, "10",
            "Seconds a client may take to send a request's head, from its first byte (then its connection is "
            "closed); a kept-alive connection may idle between requests for gunicorn's keep-alive time (75 s)."),
    Setting("CHAT_MAX_MESSAGES", _positive_int, "50", "Most messages accepted in one conversation."),
    Setting("CHAT_MAX_CHARS", _positive_int, "32000", "Most characters accepted across all messages, counting two for each break between consecutive "
            "messages of one role (they are sent joined to APIs that want roles to alternate)."),
    Setting("CHAT_MAX_BODY_BYTES", _positive_int, "262144", "Largest request body in bytes (413 above it)."),
    Setting("RULES_PATH", _text, "rules.yaml", "The keyword rules used when no model answers."),
    Setting("FALLBACK_WORD_DELAY", _non_negative_seconds, "0",
            "Optional typing pace for fallback replies, seconds per word group (0 = as fast as possible)."),
    Setting("CHAT_RATE_LIMIT", _limit_string, "20/minute;300/day",
            "Hard per-client limit on `/api/chat` (`off` disables it, e.g. behind a gateway that limits; with no "
            "budget set either, flask-limiter is not run at all)."),
    Setting("REDIS_URL", _redis_url, "",
            "The one Redis every worker and instance shares (`redis://` or `rediss://`): rate limits, budgets and "
            "the circuit breaker. Empty: each worker process keeps its own.",
            example="redis://localhost:6379/0"),
    Setting("REDIS_TIMEOUT", _seconds, "0.5",
            "Seconds any Redis call may take; past it the worker carries on without Redis (and says so in `/healthz`)."),
    Setting("RESUME_TTL", _non_negative_seconds, "600",
            "Seconds a reply's record (`X-Stream-Id`) can still be read or resumed after the reply ends; `0` records "
            "nothing (no stream ids)."),
    Setting("RESUME_GRACE", _non_negative_seconds, "10",
            "Seconds a reply goes on being produced and recorded after its client left, for the client to come "
            "back; `0` closes the upstream at once."),
    Setting("RATELIMIT_STORAGE_URI", _text, "",
            "Where rate limits and budgets count, if not in `REDIS_URL`: `memory://` counts per worker process; "
            "`redis://host:6379` shares counts across workers and machines. Default: `REDIS_URL`, else `memory://`.",
            example="memory://"),
    Setting("LLM_BUDGET_PER_CLIENT", _budget, "",
            "Soft per-client budget of live-model replies, e.g. `50/day`; above it the rules answer.", example="50/day"),
    Setting("LLM_BUDGET_GLOBAL", _budget, "", "Soft budget of live-model replies for the whole service, e.g. `5000/day`.",
            example="5000/day"),
    Setting("LLM_TOKEN_BUDGET_PER_CLIENT", _budget, "",
            "Tokens (prompt and reply) one client may spend on live models, e.g. `20000/day`; reserved before a model "
            "is called, settled on what the reply used; past it the rules answer.", example="20000/day"),
    Setting("LLM_TOKEN_BUDGET_GLOBAL", _budget, "", "Tokens the whole service may spend on live models, e.g. "
            "`2000000/day`.", example="2000000/day"),
    Setting("SERVICE_API_KEYS", _service_keys, "",
            "Comma-separated secrets your own backends send as `Authorization: Bearer <key>` to the "
            "OpenAI-compatible `/v1` API; empty: `/v1` answers 404. Each key is its own client for limits and budgets.",
            secret=True, example="a-random-secret-of-32-characters"),
    Setting("API_RATE_LIMIT", _limit_string, "600/minute",
            "Hard per-key limit on `/v1/chat/completions` (`off` disables it)."),
    Setting("TRUSTED_PROXIES", _non_negative_int, "0",
            "Number of proxies in front of the app whose `X-Forwarded-For` is trusted (Heroku: 1)."),
    Setting("CORS_ORIGINS", _origins, "", "Comma-separated origins allowed to call the API from a browser.",
            example="https://example.com"),
    Setting("EMBED_ORIGINS", _origins, "",
            "Comma-separated origins of the sites that embed the chat (`widget.js`, or the page in an iframe): "
            "they may call the API from a browser and frame the page.", example="https://shop.example.com"),
    Setting("CHAT_TITLE", _text, "Assistant", "The chat's title, on the page and in the widget."),
    Setting("CHAT_GREETING", _text, "Ask anything. Replies appear as they are written.",
            "What the chat says before the first message."),
    Setting("CHAT_SUGGESTIONS", _suggestions, "",
            "Up to 6 suggested first questions, separated by `|`, shown as buttons before the first message.",
            example="What are your opening hours?|How do I return an item?"),
    Setting("LOG_USER_TEXT", _flag, "false", "Log the user's last message (debugging only)."),
    Setting("LOG_FORMAT", _one_of("text", "json"), "text",
            "`text`: one readable `key=value` line per request; `json`: one JSON object per line, same fields."),
    Setting("METRICS_TOKEN", _api_key, "",
            "Turns on `GET /metrics` (Prometheus), which then needs `Authorization: Bearer <this token>`.",
            secret=True, example="a-long-random-string"),
    # Read by gunicorn.conf.py (and checked by streamchat.server.serve before gunicorn starts).
    Setting("HOST", _host, "0.0.0.0", "Address the server listens on (`./run` uses `127.0.0.1`)."),
    Setting("PORT", _port, "8000", "Port the server listens on (Heroku sets it)."),
    Setting("WEB_CONCURRENCY", _positive_int, "1",
            "Worker processes; each holds thousands of streams. Heroku sets it from the dyno size."),
    Setting("WORKER_CONNECTIONS", _positive_int, "10000", "Connections one worker holds at most."),
    Setting("DRAIN_SECONDS", _seconds, "20",
            "On SIGTERM, seconds open replies may take to finish; then they end with a restarting notice. Keep "
            "it 5 s under the platform's kill (Heroku: 30 s)."),
    Setting("GUNICORN_LOG_LEVEL", _one_of("debug", "info", "warning", "error", "critical"), "info",
            "The server's own log level."),
)


@dataclass(frozen=True)
class Settings:
    """Every setting, parsed; built by ``load_settings()``."""

    values: Mapping[str, Any]
    explicitly_set: frozenset[str] = field(default_factory=frozenset)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def is_set(self, env: str) -> bool:
        return env in self.explicitly_set


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse every setting from ``environ`` (default ``os.environ``), raising ConfigError on the first bad one."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    explicitly_set = set()
    for setting in SETTINGS:
        raw = environ.get(setting.env)
        if raw is not None and raw.strip() != "":
            explicitly_set.add(setting.env)
        else:
            raw = setting.default
        if raw is None:
            values[setting.attr] = None
            continue
        try:
            values[setting.attr] = setting.parse(raw.strip())
        except (ValueError, TypeError) as exc:
            shown = "***" if setting.secret else repr(raw)
            raise ConfigError(f"{setting.env}={shown} is invalid: {exc} (for example {setting.example_line()})") from None

    if values["system_prompt"] and values["system_prompt_file"]:
        raise ConfigError("Set SYSTEM_PROMPT or SYSTEM_PROMPT_FILE, not both.")
    if values["system_prompt_file"]:
        try:
            values["system_prompt"] = Path(values["system_prompt_file"]).read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"SYSTEM_PROMPT_FILE cannot be read: {exc}") from None

    values["ratelimit_storage_uri"] = values["ratelimit_storage_uri"] or values["redis_url"] or "memory://"
    configured = _configured_providers(values, explicitly_set)
    if values["llm_providers"] is None:
        values["llm_providers"] = configured
    else:
        missing = [name for name in values["llm_providers"] if name not in configured]
        if missing:
            raise ConfigError(f"LLM_PROVIDERS names {missing[0]!r}, which is not configured: "
                              f"set {configure_hint(PROVIDER_CLASSES[missing[0]])}.")
    return Settings(values=values, explicitly_set=frozenset(explicitly_set))


def _configured_providers(values: Mapping[str, Any], explicitly_set: set[str]) -> tuple[str, ...]:
    # A provider is configured by its key, or, for one that may run keyless (a local server such as
    # Ollama, llama.cpp, vLLM), by its base URL alone.
    return tuple(cls.name for cls in PROVIDERS if values[cls.key_env_var.lower()]
                 or (cls.keyless and cls.base_url_env_var in explicitly_set))


def configure_hint(cls) -> str:
    """Return what to set to configure provider ``cls``, e.g. "OPENAI_API_KEY or OPENAI_BASE_URL"."""
    return f"{cls.key_env_var} or {cls.base_url_env_var}" if cls.keyless else cls.key_env_var


def no_provider_hint() -> str:
    """Return the sentence the log shows when no provider is configured."""
    return "none configured, the rules answer every request: set " + " or ".join(
        configure_hint(cls) for cls in PROVIDERS)


def settings_table_markdown() -> str:
    """Render the settings as the README's configuration table."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default else "(none)"
        rows.append(f"| `{setting.env}` | {default} | {setting.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table_markdown())
