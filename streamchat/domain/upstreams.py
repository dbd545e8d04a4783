"""Named upstreams: the models the service may call, with their keys, tiers and weights.

``UPSTREAMS_PATH`` names a YAML file (keys never in it, only the names of the
variables that hold them)::

    upstreams:
      - name: groq                       # [a-z0-9_-]{1,32}, unique: in headers, logs, metrics, /v1/models
        protocol: openai                 # openai | anthropic: the wire format it speaks
        base_url: https://api.groq.com/openai/v1   # optional: the protocol's default
        model: llama-3.3-70b-versatile   # optional: the protocol's default
        api_keys: ["${GROQ_KEY_A}", "${GROQ_KEY_B}"]   # or api_key: "${...}"; none for keyless local servers
        headers: {}                      # optional extra request headers; values may use ${VAR}
        tier: 1                          # optional, default 1: lower tiers are tried first
        weight: 1                        # optional, default 1: share of first picks within its tier

``${VAR}`` is read from the environment (``.env`` included); a key must be one.
Every problem is an ``UpstreamsError`` whose one line names the file, the entry
and the field. Without a file, the ``OPENAI_*`` and ``ANTHROPIC_*`` settings
describe two upstreams named ``openai`` and ``anthropic`` (``streamchat.config``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from .provider_facts import FACTS_BY_NAME

NAME = re.compile(r"[a-z0-9_-]{1,32}")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # what an HTTP header carries as is
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
FIELDS = ("name", "protocol", "base_url", "model", "api_keys", "api_key", "headers", "tier", "weight")


class UpstreamsError(ValueError):
    """The upstreams file is unusable; the message is one line: the file, the entry, the field, what is wrong."""


@dataclass(frozen=True)
class Upstream:
    """One model the service may call, and how."""

    name: str
    protocol: str  # a key of provider_facts.FACTS_BY_NAME
    base_url: str
    model: str
    # Never in a repr (a traceback or a log line would print it): taken in turn; none for a keyless server.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # extra request headers (Azure's api-key, OpenRouter's referer)
    tier: int = 1
    weight: float = 1.0
    #: Values never to log: the keys, and the header values read from ``${VAR}`` (Azure's api-key is one).
    secrets: tuple[str, ...] = field(default=(), repr=False)


def load_upstreams(path: str, environ: Mapping[str, str]) -> tuple[Upstream, ...]:
    """Read and check the upstreams file at ``path``, its ``${VAR}`` read from ``environ``."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UpstreamsError(f"{path}: cannot be read: {exc}") from None
    return parse_upstreams(text, path, environ)


def parse_upstreams(text: str, path: str, environ: Mapping[str, str]) -> tuple[Upstream, ...]:
    """Return the upstreams ``text`` declares, in the file's order (``path`` names it in errors)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UpstreamsError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(document, dict) or set(document) != {"upstreams"}:
        raise UpstreamsError(f"{path}: the file must hold one key, 'upstreams', a list of upstreams")
    entries = document["upstreams"]
    if not isinstance(entries, list) or not entries:
        raise UpstreamsError(f"{path}: 'upstreams' must be a non-empty list")
    upstreams: list[Upstream] = []
    for index, entry in enumerate(entries, 1):
        upstream = _entry(entry, _Where(path, index, entry), environ)
        if any(u.name == upstream.name for u in upstreams):
            raise UpstreamsError(f"{path}: upstream {index} ({upstream.name}): name: {upstream.name!r} is used twice")
        upstreams.append(upstream)
    return tuple(upstreams)


class _Where:
    """Names a field of one entry in an error."""

    def __init__(self, path: str, index: int, entry: Any):
        name = entry.get("name") if isinstance(entry, dict) else None
        self.entry = f"{path}: upstream {index}" + (f" ({name})" if isinstance(name, str) and name else "")

    def error(self, field: str | None, problem: str) -> UpstreamsError:
        return UpstreamsError(f"{self.entry}: {field}: {problem}" if field else f"{self.entry}: {problem}")


def _entry(entry: Any, where: _Where, environ: Mapping[str, str]) -> Upstream:
    if not isinstance(entry, dict):
        raise where.error(None, "must be a mapping of fields (name, protocol, model...)")
    unknown = [field for field in entry if field not in FIELDS]
    if unknown:
        raise where.error(str(unknown[0]), f"unknown field; known: {', '.join(FIELDS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise where.error("name", "required: 1-32 of a-z, 0-9, _ and -")
    protocol = entry.get("protocol")
    if protocol not in FACTS_BY_NAME:
        raise where.error("protocol", f"required: one of {', '.join(FACTS_BY_NAME)}")
    facts = FACTS_BY_NAME[protocol]
    base_url = _text(entry, "base_url", where, environ, facts.default_base_url)
    if not re.match(r"^https?://[^/\s]+", base_url):
        raise where.error("base_url", "must be an http:// or https:// URL")
    model = _text(entry, "model", where, environ, facts.default_model)
    if not model:
        raise where.error("model", "must not be empty")
    keys = _keys(entry, where, environ)
    headers, secret_headers = _headers(entry, where, environ)
    return Upstream(name=name, protocol=protocol, base_url=base_url.rstrip("/"), model=model, api_keys=keys,
                    headers=headers, tier=_tier(entry, where), weight=_weight(entry, where),
                    secrets=keys + secret_headers)


def _text(entry: dict, field: str, where: _Where, environ: Mapping[str, str], default: str) -> str:
    value = entry.get(field, default)
    if not isinstance(value, str):
        raise where.error(field, "must be a string")
    return _expand(value, field, where, environ).strip()


def _expand(value: str, field: str, where: _Where, environ: Mapping[str, str]) -> str:
    def variable(match: re.Match) -> str:
        name = match.group(1)
        if not environ.get(name, "").strip():
            raise where.error(field, f"${{{name}}} is not set in the environment or .env")
        return environ[name].strip()

    return VARIABLE.sub(variable, value)


def _keys(entry: dict, where: _Where, environ: Mapping[str, str]) -> tuple[str, ...]:
    if "api_keys" in entry and "api_key" in entry:
        raise where.error("api_keys", "set api_keys or api_key, not both")
    field = "api_keys" if "api_keys" in entry else "api_key"
    raw = entry.get(field)
    if raw is None:
        return ()
    values = raw if field == "api_keys" else [raw]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise where.error(field, "must be a list of \"${VARIABLE}\" strings" if field == "api_keys"
                          else "must be a \"${VARIABLE}\" string")
    keys = []
    for position, value in enumerate(values, 1):
        if not VARIABLE.fullmatch(value.strip()):
            # Never echo what was written: it may be the key itself.
            raise where.error(field, f"key {position} must be \"${{VARIABLE}}\": keys live in the environment, "
                                     "never in this file")
        key = _expand(value.strip(), field, where, environ)
        if not KEY_CHARS.fullmatch(key):
            raise where.error(field, f"key {position} ({value.strip()}) must be printable ASCII with no spaces "
                                     "(was a character pasted with it?)")
        keys.append(key)
    if len(set(keys)) != len(keys):
        raise where.error(field, "names the same key twice")
    return tuple(keys)


def _headers(entry: dict, where: _Where,
             environ: Mapping[str, str]) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Return the extra headers, and the values among them that were read from ``${VAR}``."""
    raw = entry.get("headers") or {}
    if not isinstance(raw, dict):
        raise where.error("headers", "must be a mapping of header names to values")
    headers, secret = [], []
    for name, value in raw.items():
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise where.error("headers", f"{name!r} is not a header name")
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise where.error("headers", f"{name}: the value must be a string")
        expanded = _expand(str(value), "headers", where, environ)
        if "\r" in expanded or "\n" in expanded:
            raise where.error("headers", f"{name}: the value must be one line")
        headers.append((name, expanded))
        if VARIABLE.search(str(value)):
            secret.append(expanded)
    return tuple(headers), tuple(secret)


def _tier(entry: dict, where: _Where) -> int:
    tier = entry.get("tier", 1)
    if not isinstance(tier, int) or isinstance(tier, bool) or tier < 1:
        raise where.error("tier", "must be a whole number, 1 or more")
    return tier


def _weight(entry: dict, where: _Where) -> float:
    weight = entry.get("weight", 1)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight <= 0:
        raise where.error("weight", "must be a number above 0")
    return float(weight)
