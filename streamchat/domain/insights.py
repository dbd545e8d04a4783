"""What visitors ask and how they were answered: one entry per reply, and the owner's summary of a period.

With ``INSIGHTS_RETENTION_DAYS`` set, every reply's final ``ReplyRecord`` becomes
an entry (``entry_of``): a plain dict, the same as a JSON line in the file store,
a Redis stream entry, the JSON export and a CSV row. The visitor's question is
masked (``redaction.mask_personal``) before the entry exists, so nothing
unmasked is ever stored. A rating is an event of its own (``rating_of``) naming
the entry's id; the latest one for an id wins.

``summarize`` turns a period's entries, ratings and the rules in force into the
``Summary`` that ``/admin`` and ``./run insights`` show: replies per day by mode,
time to first byte, ratings, the most asked questions, the unanswered ones
grouped by the words they share as the rules match them (``rules.normalize``:
case, accents and punctuation ignored), each group with a rule to paste into the
rules file, the rules nobody needed, tokens per day.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import yaml

from ..redaction import mask_personal, one_line
from .record import ReplyRecord
from .rules import Rules, normalize

DAY = 86_400
#: The kept part of a visitor's question: enough to know what was asked.
QUESTION_CHARS = 500
#: What is masked at most: a longer question is cut first (the rest is never kept).
MASKED_CHARS = 4 * QUESTION_CHARS
RATINGS = ("up", "down")
CACHED = ("hit", "joined")
#: The columns of an entry, in the export's order.
FIELDS = ("id", "time", "api", "mode", "reason", "upstream", "model", "rule", "question", "chars", "input_tokens",
          "output_tokens", "ttfb_ms", "ended", "cache", "rating")
INVISIBLE = {"Cc", "Cf", "Co", "Cs", "Zl", "Zp"}  # control, format (bidi, zero-width), private, separators
PAUSE_EVERY = 1_000  # entries a pass handles between two calls of ``pause``
#: The newest unanswered questions grouped for the owner's page (a group costs a pass over them).
MOST_GROUPED = 5_000
#: What masking leaves in a question: not words the visitor chose.
_MASKS = re.compile(r"\[(?:email|phone|number|redacted)\]")
#: Words too common to say what a question is about (a few languages; the rules' own matching ignores nothing).
STOPWORDS = frozenset("""
a an the and or but if of to in on at by for with from about into over after before as is are was were be been
being am do does did doing have has had having i me my we our you your he she it its they them their this that
these those what which who whom whose when where why how can could would should will shall may might must not
no yes so than too very just there here any some all more most other such only own same also please hi hello
thanks thank want need know tell get got give let lets like im ive id dont cant wont isnt arent whats hows
le la les un une des du de et ou mais est sont je tu il elle nous vous ils elles ce cette ces mon ma mes ton ta
tes son sa ses notre votre leur que qui quoi quel quelle comment pourquoi ou quand avec pour par sur dans pas ne
en au aux y a est ca
der die das ein eine einen und oder aber ist sind ich du er sie es wir ihr mein meine dein wie was wer wo wann
warum mit fur von zu im am nicht kein keine den dem des auf an bei
el los las un una unos unas y o pero es son yo tu usted mi mis que como donde cuando por para con sin se lo
del al hay
il lo gli di da che e non per con su sono io mio
o os um uma e ou mas sou nao com por para em
""".split())


def new_entry_id() -> str:
    """An id for a reply that has no stream id (``/v1``): nothing can rate it, but the export names it."""
    return secrets.token_urlsafe(12)


def mask_question(text: str) -> str:
    """The visitor's question as it may be kept: masked, then cut to ``QUESTION_CHARS``."""
    masked = mask_personal(text[:MASKED_CHARS])
    return masked if len(masked) <= QUESTION_CHARS else masked[:QUESTION_CHARS - 1] + "…"


def entry_of(record: ReplyRecord, question: str, now: float | None = None) -> dict[str, Any]:
    """The insights entry of a reply that closed, its question (already masked) included."""
    ttfb = None
    if record.first_byte_at is not None:
        ttfb = round((record.first_byte_at - record.started) * 1000, 1)
    caller = record.caller
    return {"id": record.stream_id or new_entry_id(), "time": round(time.time() if now is None else now, 3),
            "api": caller.endpoint if caller else "", "mode": record.mode, "reason": record.reason,
            "upstream": record.provider, "model": record.model, "rule": record.rule if record.mode != "live" else "",
            "question": question, "chars": record.chars, "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens, "ttfb_ms": ttfb, "ended": record.ended, "cache": record.cache}


def keeper(add: Callable[[dict[str, Any]], None]) -> Callable[[ReplyRecord], None]:
    """The ``Relay`` listener that hands each closed reply's entry to ``add`` (a store's queue)."""
    def keep(record: ReplyRecord) -> None:
        if record.question is not None:  # else not a visitor's question (insights off, or no web request)
            add(entry_of(record, mask_question(record.question)))
    return keep


def rating_of(entry_id: str, rating: str, now: float | None = None) -> dict[str, Any]:
    """A visitor's rating of the reply ``entry_id``: an event of its own, the latest for an id wins."""
    return {"id": entry_id, "time": round(time.time() if now is None else now, 3), "rating": rating}


def is_rating(event: dict[str, Any]) -> bool:
    return "rating" in event and "mode" not in event


def rated(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries among ``events``, in time order, each with its latest rating (``""`` for none): every entry
    whole, for a few of them (the owner's page reads a period through ``summarize``)."""
    events = list(events)
    ratings = latest_ratings(events)
    entries = [{**event, "rating": ratings.get(event["id"], "")} for event in events if not is_rating(event)]
    return sorted(entries, key=lambda entry: entry["time"])


def latest_ratings(events: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Each rated entry's id and its latest rating, from ``events`` (the entries themselves are not kept)."""
    ratings: dict[str, dict[str, Any]] = {}
    for event in events:
        if is_rating(event):
            _keep_latest(ratings, event)
    return {entry_id: event["rating"] for entry_id, event in ratings.items()}


def _keep_latest(ratings: dict[str, dict[str, Any]], event: dict[str, Any]) -> None:
    # By the rating's own time: two workers' flushers may write two ratings of one reply in either order.
    if event["id"] not in ratings or event["time"] >= ratings[event["id"]]["time"]:
        ratings[event["id"]] = event


# -- the summary -------------------------------------------------------------------------------------------


@dataclass
class Day:
    """One day of the period (UTC)."""

    day: date
    replies: Counter = field(default_factory=Counter)  # by bucket: "live", "cached", "fallback: <reason>"
    ttfb_p50: float | None = None
    ttfb_p95: float | None = None
    tokens: int = 0
    up: int = 0
    down: int = 0

    @property
    def total(self) -> int:
        return sum(self.replies.values())


@dataclass
class Group:
    """Unanswered questions that share words: a rule with those words would answer them all."""

    words: list[str]  # the words every question of the group holds, as the rules match them
    count: int
    examples: list[str]
    rule_yaml: str  # a rule to paste at the end of the rules file's ``rules:`` list


@dataclass
class Summary:
    """A period's insights, as the owner's page and ``./run insights`` show them."""

    days: list[Day]
    buckets: list[str]  # the reply buckets present, in a stable order
    by_bucket: Counter  # replies in the period, by bucket
    total: int
    ratings: Counter
    endings: Counter
    top_questions: list[tuple[str, int]]
    unanswered: list[Group]
    unanswerable: int  # unanswered questions with no word a rule could match (masked, emoji, digits)
    unused_rules: list[str]
    token_budget_per_day: int | None  # LLM_TOKEN_BUDGET_GLOBAL, when it is counted per day

    @property
    def first(self) -> date:
        return self.days[0].day

    @property
    def last(self) -> date:
        return self.days[-1].day


def period_start(days: int, today: date | None = None) -> float:
    """The Unix time the last ``days`` days (today included, UTC) begin."""
    today = today or datetime.now(timezone.utc).date()
    first = today - timedelta(days=days - 1)
    return datetime(first.year, first.month, first.day, tzinfo=timezone.utc).timestamp()


def bucket_of(entry: dict[str, Any]) -> str:
    if entry.get("cache") in CACHED:
        return "cached"
    if entry.get("mode") == "live":
        return "live"
    return f"fallback: {entry.get('reason') or 'unknown'}"


def summarize(events: Iterable[dict[str, Any]], rules: Rules | None, days: int, today: date | None = None,
              token_budget_per_day: int | None = None, top: int = 20, pause: Callable[[], None] = lambda: None
              ) -> Summary:
    """The summary of the last ``days`` days of ``events`` (entries and ratings, read once), with the rules in force.

    Each entry is counted as it is read and only what the questions' lists need is kept of it, each
    distinct question once: 50,000 entries are tens of MB here, not the 100 MB they are as whole dicts.
    ``pause`` is called between steps of the longer passes (a worker's other streams take their turn there).
    """
    today = today or datetime.now(timezone.utc).date()
    first = today - timedelta(days=days - 1)
    by_day = {first + timedelta(days=n): Day(first + timedelta(days=n)) for n in range(days)}
    ttfbs: dict[date, list[float]] = defaultdict(list)
    present: Counter = Counter()
    endings: Counter = Counter()
    ratings: dict[str, dict[str, Any]] = {}
    texts: dict[str, str] = {}  # each distinct question once: visitors ask the same things
    kept: list[dict[str, Any]] = []
    for event in events:
        if is_rating(event):
            _keep_latest(ratings, event)
            continue
        day = by_day.get(_day_of(event))
        if day is None:
            continue
        bucket = bucket_of(event)
        day.replies[bucket] += 1
        present[bucket] += 1
        endings[event.get("ended", "")] += 1
        day.tokens += int(event.get("input_tokens") or 0) + int(event.get("output_tokens") or 0)
        if event.get("ttfb_ms") is not None:
            ttfbs[day.day].append(float(event["ttfb_ms"]))
        question = event.get("question") or ""
        kept.append({"id": event["id"], "time": event["time"], "day": day.day,
                     "question": texts.setdefault(question, question), "rule": event.get("rule", ""),
                     "mode": event.get("mode", "")})
    # In the order they were asked: a store holds them in the order its writers flushed them.
    kept.sort(key=lambda entry: entry["time"])
    for entry in kept:
        entry["rating"] = rating = ratings[entry["id"]]["rating"] if entry["id"] in ratings else ""
        if rating == "up":
            by_day[entry["day"]].up += 1
        elif rating == "down":
            by_day[entry["day"]].down += 1
    for day, values in ttfbs.items():
        by_day[day].ttfb_p50, by_day[day].ttfb_p95 = percentile(values, 50), percentile(values, 95)
    buckets = [b for b in ("live", "cached") if b in present] + sorted(b for b in present if b.startswith("fallback"))
    groups, unanswerable = group_unanswered(unanswered(kept, rules, pause), rules, most=top, pause=pause)
    used = {e["rule"] for e in kept}
    return Summary(days=list(by_day.values()), buckets=buckets, by_bucket=present, total=len(kept),
                   ratings=Counter(e["rating"] for e in kept if e["rating"]), endings=endings,
                   top_questions=top_questions(kept, top, pause), unanswered=groups, unanswerable=unanswerable,
                   unused_rules=[r.name for r in rules.rules if r.name not in used] if rules else [],
                   token_budget_per_day=token_budget_per_day)


def budget_per_day(budget: str) -> int | None:
    """A budget's amount per day when it is counted per day (``2000000/day``), else None."""
    from limits import parse_many  # here: the domain's other users need no rate-limit library

    return next((item.amount for item in (parse_many(budget) if budget else []) if item.get_expiry() == DAY), None)


def as_text(summary: Summary, where: str) -> str:
    """The summary as ``./run insights`` prints it: counts, top and unanswered questions, rules as YAML."""
    lines = [f"Insights {summary.first} to {summary.last} (UTC), kept in {where}", "",
             f"{summary.total} repl{'y' if summary.total == 1 else 'ies'}: " + (", ".join(f"{summary.by_bucket[b]} {b}" for b in summary.buckets)
                                            or "none"),
             f"ratings: {summary.ratings['up']} up, {summary.ratings['down']} down",
             "endings: " + (", ".join(f"{n} {e.replace('_', ' ')}" for e, n in summary.endings.most_common()) or "none")]
    lines += ["", "day         replies  ttfb p50  ttfb p95    tokens"]
    for day in summary.days:
        p50 = f"{day.ttfb_p50:.0f} ms" if day.ttfb_p50 is not None else "-"
        p95 = f"{day.ttfb_p95:.0f} ms" if day.ttfb_p95 is not None else "-"
        lines.append(f"{day.day}  {day.total:>7}  {p50:>8}  {p95:>8}  {day.tokens:>8}")
    lines += ["", "most asked:"] + [f"  {count:>4}  {question}" for question, count in summary.top_questions]
    lines += ["", "unanswered (the default reply or rated down), with a rule to paste at the end of the rules file:"]
    for group in summary.unanswered:
        lines.append(f"  {group.count} x {' '.join(group.words)}: " + " | ".join(group.examples))
    if summary.unanswered:
        lines += ["", "rules:"] + [line for group in summary.unanswered for line in group.rule_yaml.splitlines()]
    lines += ["", "rules nobody needed: " + (", ".join(summary.unused_rules) or "none")]
    # Each line escaped: what a visitor typed must not move a terminal's cursor or change its colours.
    return "\n".join(one_line(line) for line in lines)


def _day_of(entry: dict[str, Any]) -> date:
    return datetime.fromtimestamp(float(entry["time"]), timezone.utc).date()


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile ``p`` of ``values`` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def top_questions(entries: list[dict[str, Any]], top: int,
                  pause: Callable[[], None] = lambda: None) -> list[tuple[str, int]]:
    """The most asked questions (``entries`` in the order asked), the same question told apart from another as
    the rules would (``normalize``), each shown in its most usual wording (of equals, the first asked)."""
    counts: Counter = Counter()
    wordings: dict[str, Counter] = defaultdict(Counter)
    keys: dict[str, str] = {}
    for number, entry in enumerate(entries, 1):
        if number % PAUSE_EVERY == 0:
            pause()
        question = entry.get("question") or ""
        key = keys.get(question)
        if key is None:
            key = keys[question] = normalize(question)
        if key.strip():
            counts[key] += 1
            wordings[key][question.strip()] += 1
    return [(wordings[key].most_common(1)[0][0], count) for key, count in counts.most_common(top)]


def unanswered(entries: list[dict[str, Any]], rules: Rules | None,
               pause: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
    """The newest ``MOST_GROUPED`` entries nobody answered (oldest first): the rules' default reply, or a
    visitor's rating down.

    A question the rules in force answer now (a rule added since) is answered: it is left out.
    """
    found = []
    answered_now: dict[str, bool] = {}  # by question: each distinct one matched once
    for number, entry in enumerate(reversed(entries), 1):
        if len(found) >= MOST_GROUPED:
            break
        if number % PAUSE_EVERY == 0:
            pause()
        defaulted = entry.get("mode") == "fallback" and entry.get("rule") in ("default", "builtin")
        if defaulted and rules is not None:
            question = entry.get("question") or ""
            if question not in answered_now:
                answered_now[question] = rules.match(_asked(entry)).name != "default"
            if answered_now[question]:
                continue
        if defaulted or entry.get("rating") == "down":
            found.append(entry)
    found.reverse()
    return found


def _asked(entry: dict[str, Any]) -> list[dict[str, str]]:
    # Without the masks: "[email]" is no word the visitor wrote (the rules saw the address itself).
    return [{"role": "user", "content": _MASKS.sub(" ", entry.get("question") or "")}]


def words_of(question: str) -> list[str]:
    """The words of a question a rule could match on it, as the rules see them, minus the most common ones."""
    return [w for w in normalize(_MASKS.sub(" ", question)).split()
            if w not in STOPWORDS and not w.isdigit() and len(w) > 1]


def group_unanswered(entries: list[dict[str, Any]], rules: Rules | None, most: int = 20,
                     pause: Callable[[], None] = lambda: None) -> tuple[list[Group], int]:
    """Group unanswered questions by the words they share; return at most ``most`` groups (largest first) and
    how many questions had no word to group by.

    Greedy: the word most of the remaining questions hold makes a group of them (ties: the longer word,
    then the first in the alphabet), until no word is shared; each question left is a group of its own.
    The newest ``MOST_GROUPED`` questions are grouped: each group costs a pass over them.
    """
    pending = []
    unanswerable = 0
    for entry in entries[-MOST_GROUPED:]:
        words = set(words_of(entry.get("question") or ""))
        if words:
            pending.append((entry, words))
        else:
            unanswerable += 1
    groups: list[Group] = []
    names: set[str] = {r.name for r in rules.rules} if rules else set()
    while pending and len(groups) < most:
        pause()
        counts = Counter(word for _, words in pending for word in words)
        word, count = min(counts.items(), key=lambda item: (-item[1], -len(item[0]), item[0]))
        if count < 2:
            break
        members = [(entry, words) for entry, words in pending if word in words]
        pending = [(entry, words) for entry, words in pending if word not in words]
        groups.append(_group(word, members, rules, names))
    for entry, words in pending[:max(0, most - len(groups))]:
        word = min(words, key=lambda w: (-len(w), w))
        groups.append(_group(word, [(entry, words)], rules, names))
    return groups, unanswerable


def _group(word: str, members: list[tuple[dict, set[str]]], rules: Rules | None, names: set[str]) -> Group:
    shared = set.intersection(*(words for _, words in members)) if len(members) > 1 else {word}
    keywords = [word] + sorted(shared - {word})[:3]
    questions = Counter(entry.get("question", "").strip() for entry, _ in members)
    examples = [question for question, _ in questions.most_common(3)]
    return Group(words=keywords, count=len(members), examples=examples,
                 rule_yaml=suggested_rule(keywords, examples[0], _priority_to_win(members, rules), names))


def _priority_to_win(members: list[tuple[dict, set[str]]], rules: Rules | None) -> int:
    """The priority a new rule needs to answer a group some of whose questions another rule answered (rated down)."""
    if rules is None:
        return 0
    by_name = {r.name: r for r in rules.rules}
    answered_by = [by_name[e["rule"]] for e, _ in members if e.get("rule") in by_name]
    return max((r.priority + 1 for r in answered_by), default=0)


def suggested_rule(keywords: list[str], example: str, priority: int, taken: set[str]) -> str:
    """A rule, as YAML to paste at the end of the rules file's ``rules:`` list, that answers questions holding
    every one of ``keywords`` (its reply for the owner to write)."""
    name = "unanswered-" + "-".join(keywords[:2])
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}-{n}", n + 1
    taken.add(unique)
    lines = [f"- name: {_scalar(unique)}", f"  keywords: [{', '.join(_scalar(k) for k in keywords)}]"]
    if priority:
        lines.append(f"  priority: {priority}")
    lines += ["  replies:", f"    - {_scalar('Write the answer to questions such as: ' + example)}"]
    return "".join("  " + line + "\n" for line in lines)


def _scalar(text: str) -> str:
    """``text`` as a double-quoted YAML scalar (JSON's quoting is YAML's), all escaped when it holds a
    character YAML refuses, or an invisible one (a bidi override would show the owner other text)."""
    if any(unicodedata.category(ch) in INVISIBLE for ch in text):
        return json.dumps(text)
    quoted = json.dumps(text, ensure_ascii=False)
    try:
        if yaml.safe_load(quoted) == text:
            return quoted
    except yaml.YAMLError:
        pass
    return json.dumps(text)
