"""The rule-based responder: keyword rules from a YAML file, reloaded when the file changes.

The file format is documented at the top of the shipped ``rules.yaml``. In short::

    default: ["What to say when no rule matches", ...]
    rules:
      - name: greeting                 # for logs and error messages
        keywords: [hello, hi, "good morning"]   # whole words or phrases
        patterns: ['\\bhowdy\\b']         # optional regular expressions
        priority: 0                    # optional; higher wins
        scope: latest                  # or "conversation": also look at earlier user turns
        replies: ["Hello!", "Hi there!"]

Matching is case-, accent- and punctuation-insensitive on whole words.
Choosing among matching rules: highest ``priority``, then highest score (a
keyword scores its number of words, a pattern scores 1, so "opening hours"
beats "hours"), then the rule that comes first in the file. A rule's replies
are used in turn, so a user asking twice gets a different answer.

``RulesStore`` stats the file on every use (one cheap system call) and
reloads it under a lock when it changed. An invalid file never replaces
good rules: the last good ones stay in force and ``store.error`` says what
is wrong and where (line and column).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import yaml

SCOPES = ("latest", "conversation")
_NEVER = object()
#: In the shipped rules.yaml's placeholder replies: while one is there, visitors see the sample.
SAMPLE_MARK = "(Site owner: edit"
RULE_KEYS = {"name", "keywords", "patterns", "priority", "scope", "replies"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rules file, with where it is (1-based line and column, 0 when unknown)."""

    message: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}: " if self.line else ""
        return f"{where}{self.message}"


class RulesError(ValueError):
    """A rules file is invalid; ``problems`` lists every problem found."""

    def __init__(self, path: str, problems: list[Problem]):
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(str(p) for p in problems))


def normalize(text: str) -> str:
    """Fold case, accents and punctuation away: "Héllo, WORLD!" -> " hello world "."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " " + " ".join(re.findall(r"\w+", bare)) + " "


@dataclass
class Rule:
    name: str
    keywords: list[str]  # normalized, padded with spaces
    patterns: list[re.Pattern[str]]
    priority: int
    scope: str
    replies: list[str]
    order: int
    _turn: itertools.count = field(default_factory=itertools.count, repr=False)

    def score(self, normalized: str, raw: str) -> int:
        score = sum(keyword.count(" ") - 1 for keyword in self.keywords if keyword in normalized)
        return score + sum(1 for pattern in self.patterns if pattern.search(raw))

    def next_reply(self) -> str:
        return self.replies[next(self._turn) % len(self.replies)]


@dataclass
class Rules:
    rules: list[Rule]
    default: Rule

    @property
    def sample(self) -> bool:
        """Whether these are still the shipped sample rules: a reply carries its placeholder for the site owner."""
        return any(SAMPLE_MARK in reply for rule in (*self.rules, self.default) for reply in rule.replies)

    def reply(self, messages: list[dict[str, str]]) -> tuple[str, str]:
        """Return ``(rule name, reply)`` for a conversation whose last message is the user's."""
        chosen = self.match(messages)
        return chosen.name, chosen.next_reply()

    def match(self, messages: list[dict[str, str]]) -> Rule:
        """Return the rule that answers a conversation (``default`` when none matches), using none of its replies."""
        user_turns = [m["content"] for m in messages if m["role"] == "user"]
        latest = user_turns[-1] if user_turns else ""
        everything = "\n".join(user_turns)
        latest_normalized, everything_normalized = normalize(latest), normalize(everything)
        best: tuple[int, int, int] | None = None
        chosen = self.default
        for rule in self.rules:
            if rule.scope == "latest":
                score = rule.score(latest_normalized, latest)
            else:
                score = rule.score(everything_normalized, everything)
            if score and (best is None or (rule.priority, score, -rule.order) > best):
                best, chosen = (rule.priority, score, -rule.order), rule
        return chosen


def parse_rules(text: str, path: str = "rules.yaml") -> Rules:
    """Build rules from YAML text, raising RulesError with every problem found."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RulesError(path, [Problem(f"YAML syntax error: {problem}",
                                        mark.line + 1 if mark else 0, mark.column + 1 if mark else 0)]) from None
    problems: list[Problem] = []

    def problem(message: str, *where: str | int) -> None:
        line, column = _position(text, where)
        problems.append(Problem(message, line, column))

    if not isinstance(data, dict):
        raise RulesError(path, [Problem("the file must be a mapping with 'rules' and 'default'", 1, 1)])
    for key in data:
        if key not in ("rules", "default"):
            problem(f"unknown top-level key {key!r} (expected 'rules' and 'default')", key)
    default_replies = _strings(data.get("default"), "default", problem, ("default",))
    raw_rules = data.get("rules")
    rules: list[Rule] = []
    if not isinstance(raw_rules, list) or not raw_rules:
        problem("'rules' must be a non-empty list of rules", "rules")
        raw_rules = []
    for index, raw in enumerate(raw_rules):
        where = ("rules", index)
        if not isinstance(raw, dict):
            problem(f"rule {index + 1} must be a mapping", *where)
            continue
        name = str(raw.get("name") or f"rule {index + 1}")
        for key in raw:
            if key not in RULE_KEYS:
                problem(f"{name}: unknown key {key!r} (expected one of {', '.join(sorted(RULE_KEYS))})", *where, key)
        keywords = _strings(raw.get("keywords", []), f"{name}: keywords", problem, (*where, "keywords"),
                            allow_empty=True)
        normalized = [normalize(k) for k in keywords]
        for keyword, norm in zip(keywords, normalized):
            if not norm.strip():
                problem(f"{name}: keyword {keyword!r} has no letters or digits", *where, "keywords")
        patterns = []
        for pattern_index, source in enumerate(_strings(raw.get("patterns", []), f"{name}: patterns", problem,
                                                        (*where, "patterns"), allow_empty=True)):
            try:
                patterns.append(re.compile(source, re.IGNORECASE))
            except re.error as exc:
                problem(f"{name}: pattern {source!r} is not a valid regular expression: {exc}",
                        *where, "patterns", pattern_index)
        if not raw.get("keywords") and not raw.get("patterns"):
            problem(f"{name}: needs 'keywords' or 'patterns'", *where)
        priority = raw.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            problem(f"{name}: priority must be a whole number", *where, "priority")
            priority = 0
        scope = raw.get("scope", "latest")
        if scope not in SCOPES:
            problem(f"{name}: scope must be one of {', '.join(SCOPES)}", *where, "scope")
        replies = _strings(raw.get("replies"), f"{name}: replies", problem, (*where, "replies"))
        rules.append(Rule(name, [n for n in normalized if n.strip()], patterns, priority, scope, replies, index))
    if problems:
        raise RulesError(path, problems)
    return Rules(rules, Rule("default", [], [], 0, "latest", default_replies, len(rules)))


def _strings(value: Any, what: str, problem, where: tuple, allow_empty: bool = False) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or (not value and not allow_empty):
        problem(f"{what} must be a {'' if allow_empty else 'non-empty '}list of strings", *where)
        return []
    strings = []
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int, float)) or str(item).strip() == "":
            problem(f"{what}: item {index + 1} must be a non-empty string", *where, index)
        else:
            strings.append(str(item))
    return strings


def _position(text: str, path: tuple) -> tuple[int, int]:
    """Return the 1-based line and column of the node at ``path`` (keys and indices) in ``text``."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return 0, 0
    found = node
    for step in path:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == step), None)
            if match is None:
                break
            found, node = match[0], match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            found = node = node.value[step]
        else:
            break
    if found is None:
        return 0, 0
    return found.start_mark.line + 1, found.start_mark.column + 1


def check_file(path: str) -> tuple[bool, list[str]]:
    """Check the rules file at ``path``: return whether it is usable, and the lines that say so."""
    try:
        rules = load_rules(path)
    except RulesError as exc:
        return False, [f"{path}:{problem.line}:{problem.column}: {problem.message}" if problem.line
                       else f"{path}: {problem.message}" for problem in exc.problems]
    return True, [f"{path}: OK, {len(rules.rules)} rules and {len(rules.default.replies)} default replies"]


def load_rules(path: str) -> Rules:
    """Read and parse a rules file, raising RulesError when it cannot be used."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise RulesError(path, [Problem("no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(path, [Problem(f"cannot read the file: {exc}")]) from None
    return parse_rules(text, path)


SAMPLE_NOTE = ("the shipped sample rules are in use: visitors get replies that say \"Site owner: edit...\"; "
               "put your own answers in the rules file (it reloads without a restart)")


class RulesStore:
    """The rules in force, reloaded when the file changes, keeping the last good ones on error."""

    def __init__(self, path: str, on_reload=None):
        self.path = path
        self.error: RulesError | None = None
        self.loaded_at_signature: object = _NEVER  # differs from any stat result, even "missing"
        self._rules: Rules | None = None
        self._lock = threading.Lock()
        self._on_reload = on_reload or (lambda store: None)

    def _signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def current(self) -> Rules | None:
        """Return the rules in force, reloading first if the file changed since last time."""
        signature = self._signature()
        if signature != self.loaded_at_signature:
            with self._lock:
                if signature != self.loaded_at_signature:
                    self._reload(signature)
        return self._rules

    @property
    def in_force(self) -> Rules | None:
        """The rules in force, without looking at the file (``on_reload`` callbacks use this)."""
        return self._rules

    def _reload(self, signature: tuple | None) -> None:
        self.loaded_at_signature = signature
        try:
            self._rules = load_rules(self.path)
            self.error = None
        except RulesError as exc:
            self.error = exc
        self._on_reload(self)

    def health(self) -> dict[str, Any]:
        """Return the file, whether rules are loaded, and what is wrong with the file (None when nothing)."""
        rules = self.current()  # also picks up an edit made since the last request
        error = self.error
        health = {"path": self.path, "loaded": rules is not None,
                  "error": [str(p) for p in error.problems] if error else None}
        if rules is not None and rules.sample:
            health["sample"] = SAMPLE_NOTE
        return health

    def reply(self, messages: list[dict[str, str]]) -> tuple[str, str]:
        """Return ``(rule name, reply)``; a built-in apology if no valid rules were ever loaded."""
        rules = self.current()
        if rules is None:
            return "builtin", ("The assistant is offline right now and its answer rules could not be loaded. "
                               "Please try again later.")
        return rules.reply(messages)
