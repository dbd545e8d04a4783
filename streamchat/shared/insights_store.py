"""Where the insights entries are kept: the shared Redis when ``REDIS_URL`` is set, else a local file.

Entries and ratings (``domain.insights``) are events: plain dicts, written as one
JSON text each. A reply's listener only queues its entry (``add``); a flusher
thread per process writes what is queued every ``FLUSH_EVERY`` seconds, so
storing never waits in a reply's path, and a store that is away costs a warning
(once, ``Outage``) and the entries of that time, never an error.

- ``RedisInsights``: one Redis stream (``streamchat:insights``, each event's JSON
  in its field ``e``), trimmed to ``max_entries`` events as it is written and to
  the retention period once a minute; a sorted set of entry ids by time
  (``streamchat:insights:ids``) says which replies may be rated. Every instance
  sees every entry.
- ``FileInsights``: one JSON line per event in ``INSIGHTS_PATH`` (created
  ``0600``), appended by every worker of the machine under an exclusive lock on
  ``<path>.lock``, rewritten without what is too old or too many once a minute
  when needed. It survives a restart; a line cut by a crash is skipped.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import threading
import time
from typing import Any, Iterator

from ..redaction import url_without_secrets
from .outage import Outage
from .redis import redis_errors

log = logging.getLogger("streamchat")

FLUSH_EVERY = 0.25  # seconds between writes of what the replies queued
TRIM_EVERY = 60.0  # seconds between removals of what is too old or too many
MOST_QUEUED = 10_000  # events a process holds while its store is away; the oldest go first
READ_BATCH = 5_000  # events read at a time (Redis), and read before the worker's other greenlets get a turn
DAY = 86_400


class InsightsStore:
    """Insights events, kept ``retention_days`` and at most ``max_entries`` of them."""

    shared = False

    def __init__(self, retention_days: int, max_entries: int, clock=time.time):
        self.retention_days = retention_days
        self.max_entries = max_entries
        self.clock = clock
        self.queued: collections.deque[dict[str, Any]] = collections.deque(maxlen=MOST_QUEUED)
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._trimmed_at = 0.0
        self.outage = Outage("the insights store", "replies are not kept in the insights")

    # -- what the service calls --------------------------------------------------------------------

    def add(self, event: dict[str, Any]) -> None:
        """Queue an entry or a rating; the flusher writes it within ``FLUSH_EVERY`` (never in the caller's path)."""
        self.queued.append(event)
        self._run_here()

    def flush(self, trim: bool = True) -> None:
        """Write every queued event now (the flusher, a drain's last act, a read that must see them), and remove
        what is too old or too many when that is due (not for a read: ``./run insights`` deletes nothing)."""
        with self._lock:
            events = []
            while self.queued:
                events.append(self.queued.popleft())
            trim_due = trim and self.clock() - self._trimmed_at >= TRIM_EVERY  # on a quiet site too
            if not (events or trim_due) or not self.outage.should_try():
                return
            try:
                if events:
                    self._write(events)
                if trim_due:
                    self._trimmed_at = self.clock()
                    self._trim(self.cutoff())
            except (*redis_errors(), ValueError) as exc:
                self.outage.failed(exc)
                return
            self.outage.recovered()

    def knows(self, entry_id: str) -> bool:
        """Whether a reply with this id was kept (or is queued to be): only those can be rated."""
        if any(event.get("id") == entry_id for event in list(self.queued)):
            return True
        return self._knows(entry_id)

    def events(self, since: float) -> Iterator[dict[str, Any]]:
        """Every event (entries and ratings) from the Unix time ``since`` on, within the retention period, read
        as they are used: every ``READ_BATCH`` events the worker's other streams get a turn (``time.sleep(0)``
        is gevent's yield once it is patched), so a long period read for the owner stalls no reply."""
        self.flush(trim=False)
        since = max(since, self.cutoff())
        for count, event in enumerate(self._read(since), 1):
            if float(event.get("time", 0)) >= since:
                yield event
            if count % READ_BATCH == 0:
                time.sleep(0)

    def cutoff(self) -> float:
        return self.clock() - self.retention_days * DAY

    def health(self) -> dict[str, Any]:
        return {"store": self.where, "retention_days": self.retention_days, "max_entries": self.max_entries,
                **self.outage.health()}

    def start(self) -> None:
        """Start this process's flusher (``create_app`` runs in each worker: never in a master that forks)."""
        self._run_here()

    def _run_here(self) -> None:
        # One flusher per process, started in the process that keeps entries (a forked worker starts its own).
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        threading.Thread(target=self._flush_forever, name="streamchat-insights", daemon=True).start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY)
            try:
                self.flush()
            except Exception:  # never let the flusher die
                log.exception("writing insights failed")

    # -- what each store does --------------------------------------------------------------------------

    where = ""

    def _write(self, events: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def _trim(self, cutoff: float) -> None:
        raise NotImplementedError

    def _read(self, since: float) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def _knows(self, entry_id: str) -> bool:
        raise NotImplementedError

    def delete_all(self) -> int:
        """Delete every entry and rating; return how many events there were."""
        raise NotImplementedError


def _decoded(text: str) -> dict[str, Any] | None:
    try:
        event = json.loads(text)
    except ValueError:
        return None  # a line cut short by a crash, or not ours
    return event if isinstance(event, dict) and "id" in event and "time" in event else None


def _encoded(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


class RedisInsights(InsightsStore):
    """The events in one Redis stream that every instance writes and reads."""

    shared = True
    KEY = "streamchat:insights"
    IDS = "streamchat:insights:ids"

    def __init__(self, client, url: str, retention_days: int, max_entries: int, clock=time.time):
        super().__init__(retention_days, max_entries, clock)
        self.client = client
        self.where = url_without_secrets(url)

    def _write(self, events: list[dict[str, Any]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.KEY, {"e": _encoded(event)}, maxlen=self.max_entries, approximate=True)
            if "mode" in event:
                pipe.zadd(self.IDS, {event["id"]: event["time"]})
        pipe.execute()

    def _trim(self, cutoff: float) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xtrim(self.KEY, minid=f"{int(cutoff * 1000)}-0", approximate=False)
        pipe.zremrangebyscore(self.IDS, "-inf", f"({cutoff}")
        pipe.zremrangebyrank(self.IDS, 0, -self.max_entries - 1)
        pipe.execute()

    def _read(self, since: float) -> Iterator[dict[str, Any]]:
        start = f"{int(since * 1000)}-0"
        while True:
            batch = self.client.xrange(self.KEY, min=start, max="+", count=READ_BATCH)
            for _, fields in batch:
                event = _decoded(fields.get("e", ""))
                if event is not None:
                    yield event
            if len(batch) < READ_BATCH:
                return
            start = "(" + batch[-1][0]

    def _knows(self, entry_id: str) -> bool:
        try:
            return self.client.zscore(self.IDS, entry_id) is not None
        except redis_errors() as exc:
            self.outage.failed(exc)
            return False

    def delete_all(self) -> int:
        count = self.client.xlen(self.KEY)
        self.client.delete(self.KEY, self.IDS)
        return count


class FileInsights(InsightsStore):
    """The events as JSON lines in a file every worker of this machine appends to."""

    #: Bytes an event takes in the file, until a rewrite has measured this file's own.
    BYTES_PER_EVENT = 400
    #: What a rewrite keeps of ``max_entries``: room for the next tenth before the next rewrite.
    KEEP_ON_REWRITE = 0.9

    def __init__(self, path: str, retention_days: int, max_entries: int, clock=time.time):
        super().__init__(retention_days, max_entries, clock)
        self.path = os.path.abspath(path)
        self.where = f"file {self.path}"
        self.bytes_per_event = self.BYTES_PER_EVENT

    def _locked(self):
        lock = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        return lock

    def _write(self, events: list[dict[str, Any]]) -> None:
        data = "".join(_encoded(event) + "\n" for event in events).encode("utf-8")
        lock = self._locked()
        try:
            handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(handle, data)
            finally:
                os.close(handle)
        finally:
            os.close(lock)

    def _trim(self, cutoff: float) -> None:
        try:
            size = os.path.getsize(self.path)
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                oldest = _decoded(handle.readline())
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(self.path)):
                raise  # nowhere to write: still away
            return
        # A rewrite holds every worker's appends (an exclusive lock): only when the file is too old or too big.
        if size <= self.max_entries * self.bytes_per_event and (oldest is None or oldest["time"] >= cutoff):
            return
        lock = self._locked()
        try:
            lines = [line for line in self._lines() if (event := _decoded(line)) and event["time"] >= cutoff]
            if lines:
                self.bytes_per_event = max(1, size // len(lines))
            kept = lines if len(lines) <= self.max_entries else lines[-int(self.max_entries * self.KEEP_ON_REWRITE):]
            temporary = self.path + ".tmp"
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(handle, "".join(kept).encode("utf-8"))
            finally:
                os.close(handle)
            os.replace(temporary, self.path)
        finally:
            os.close(lock)

    def _lines(self) -> Iterator[str]:
        """The file's whole lines, read as they are used (a rewrite meanwhile leaves this reading the old file)."""
        try:
            handle = open(self.path, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        with handle:
            for line in handle:
                if line.endswith("\n"):
                    yield line

    def _read(self, since: float) -> Iterator[dict[str, Any]]:
        for line in self._lines():
            event = _decoded(line)
            if event is not None:
                yield event

    def _knows(self, entry_id: str) -> bool:
        quoted = json.dumps(entry_id)
        return any(quoted in line and (event := _decoded(line)) and event["id"] == entry_id and "mode" in event
                   for line in self._lines())

    def delete_all(self) -> int:
        lock = self._locked()
        try:
            count = sum(1 for _ in self._lines())
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            return count
        finally:
            os.close(lock)
