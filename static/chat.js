// The chat: sends the conversation to POST /api/chat and shows the reply as it streams.
// No dependencies and no build step. Model text is only ever inserted as text, never as HTML.
// One chat for the page and the widget: window.streamchatChat.start(root, {base}) runs it in ``root``
// (the document, or the widget's shadow root) against the service at ``base`` ("" for the page's own).
"use strict";

(() => {
 function start(root, options = {}) {
  const base = options.base || "";
  const STORAGE_KEY = "streamchat.thread.v1"; // in the host origin's storage: one conversation per site
  const CUT_SHORT_MARK = "\n\n[Reply cut short:"; // the server ends a broken stream with this notice
  const RESUME_FOR_MS = 30000; // how long a reply whose connection broke is asked for again
  const FALLBACK_LABEL = "Prepared answer"; // a reply from the site's rules, not the AI model

  const $ = (id) => root.getElementById(id);
  const threadEl = $("thread");
  const emptyEl = $("empty");
  const form = $("composer");
  const input = $("input");
  const sendButton = $("send");
  const stopButton = $("stop");
  const statusEl = $("status");
  const errorEl = $("error");
  const errorText = $("error-text");
  const retryButton = $("retry");
  const modeBadge = $("mode");
  const template = $("message-template");
  // The server's CHAT_MAX_MESSAGES and CHAT_MAX_CHARS, given to the page.
  const limits = { messages: Number(form.dataset.maxMessages) || 50, chars: Number(form.dataset.maxChars) || 32000 };
  // Thumbs up / down under each finished reply, while the site keeps insights (INSIGHTS_RETENTION_DAYS).
  const ratings = form.dataset.ratings === "on";

  let thread = loadThread(); // [{role, content, meta}]
  let controller = null; // the AbortController of the reply in progress
  let streamId = ""; // X-Stream-Id of the reply in progress: Stop ends it on the server too
  let followStream = true; // false once the user scrolls up during a reply
  let leaving = false; // the page is being unloaded: what was saved then is what a reload continues from

  // -- storage ---------------------------------------------------------------------------

  function loadThread() {
    try {
      const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "[]");
      return Array.isArray(saved) ? saved.filter((m) => m && typeof m.content === "string") : [];
    } catch (_) {
      return [];
    }
  }

  function saveThread() {
    if (leaving) return; // a fetch aborted by the unload must not overwrite the reply's saved progress
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify(thread));
    } catch (_) {
      // Private browsing or a full quota: the chat still works, it just won't survive a reload.
    }
  }

  // -- rendering -------------------------------------------------------------------------

  // A reply is Markdown, rendered safely and incrementally (static/markdown.js: one renderer per reply,
  // so a new chunk costs what its block costs); what the user typed is shown as typed.
  function renderContent(container, text, role) {
    if (role === "user") {
      const prose = document.createElement("p");
      prose.textContent = text;
      container.replaceChildren(prose);
      return;
    }
    if (!container.markdown) container.markdown = window.streamchatMarkdown.render(container);
    container.markdown.update(text);
  }

  function renderTag(view, message) {
    const tag = view.querySelector(".tag");
    const meta = message.meta || {};
    const notes = [];
    // Words for visitors: a prepared answer is not their network failing. Model names and reason
    // codes are for the site owner: in the tooltip (and the X-Terminal-* headers), not the label.
    if (meta.mode === "fallback") notes.push(FALLBACK_LABEL);
    if (meta.cutShort) notes.push("cut short");
    if (meta.stopped) notes.push("stopped");
    if (meta.interrupted) notes.push("connection lost");
    tag.hidden = notes.length === 0;
    tag.textContent = notes.join(" · ");
    tag.classList.toggle("offline", meta.mode === "fallback");
    tag.classList.toggle("warn", Boolean(meta.cutShort || meta.stopped || meta.interrupted));
    tag.title = meta.mode === "fallback" ? `Prepared answer (${meta.reason || "no model"})` : (meta.model || "");
  }

  // A finished reply with a stream id can be rated, once, and the rating changed; it is kept in the thread.
  function renderRating(view, message) {
    const box = view.querySelector(".rating");
    const meta = message.meta || {};
    box.hidden = !(ratings && message.role === "assistant" && meta.ratingId && !meta.streaming);
    box.querySelectorAll(".rate").forEach((button) => {
      button.setAttribute("aria-pressed", String(meta.rating === button.dataset.rating));
      button.onclick = () => rate(message, view, button.dataset.rating);
    });
  }

  async function rate(message, view, rating) {
    const meta = message.meta;
    if (meta.rating === rating) return;
    try {
      const response = await fetch(`${base}/api/chat/streams/${encodeURIComponent(meta.ratingId)}/feedback`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ rating }),
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      meta.rating = rating;
      saveThread();
      renderRating(view, message);
      setStatus("Thanks for your feedback.");
    } catch (error) {
      setStatus(`Your rating was not saved: ${error.message || "the server could not be reached."}`);
    }
  }

  function addView(message) {
    const view = template.content.firstElementChild.cloneNode(true);
    view.classList.add(message.role);
    view.querySelector(".who").textContent = message.role === "user" ? "You" : "Assistant";
    renderContent(view.querySelector(".content"), message.content, message.role);
    renderTag(view, message);
    renderRating(view, message);
    emptyEl.hidden = true;
    threadEl.append(view);
    return view;
  }

  function renderThread() {
    threadEl.querySelectorAll(".message").forEach((el) => el.remove());
    thread.forEach(addView);
    emptyEl.hidden = thread.length > 0;
    scrollToEnd(true);
  }

  function scrollToEnd(force) {
    if (force || followStream) threadEl.scrollTop = threadEl.scrollHeight;
  }

  threadEl.addEventListener("scroll", () => {
    const distance = threadEl.scrollHeight - threadEl.scrollTop - threadEl.clientHeight;
    followStream = distance < 40;
  });

  function showMode(meta) {
    modeBadge.hidden = false;
    if (meta.mode === "fallback") {
      modeBadge.textContent = FALLBACK_LABEL;
      modeBadge.className = "badge offline";
      modeBadge.title = "The AI model is not available right now; replies come from prepared answers.";
    } else {
      modeBadge.textContent = "AI";
      modeBadge.className = "badge live";
      modeBadge.title = meta.model || "";
    }
  }

  function setStatus(text) {
    statusEl.textContent = text;
  }

  function showError(text, retryText) {
    errorText.textContent = text;
    errorEl.hidden = false;
    retryButton.hidden = retryText === undefined;
    retryButton.onclick = retryText === undefined ? null : () => { hideError(); send(retryText); };
  }

  function hideError() {
    errorEl.hidden = true;
  }

  function setStreaming(streaming) {
    sendButton.hidden = streaming;
    stopButton.hidden = !streaming;
    input.setAttribute("aria-busy", String(streaming));
    threadEl.setAttribute("aria-busy", String(streaming));
  }

  // -- talking to the server ---------------------------------------------------------------

  // The newest messages that fit the server's limits, so a long chat keeps working: older turns drop
  // out of what the model sees. The new message always goes, so one too long on its own gets the
  // server's own error.
  function history() {
    const usable = thread.filter((m) => m.content.trim() && !(m.meta && m.meta.failed));
    const picked = [];
    let chars = 0;
    for (let i = usable.length - 1; i >= 0; i -= 1) {
      // UTF-16 units: never fewer than the server counts; it also counts the two characters that join
      // consecutive messages of one role (they go upstream as one).
      const size = usable[i].content.length + (picked.length && picked[0].role === usable[i].role ? 2 : 0);
      if (picked.length && (picked.length >= limits.messages || chars + size > limits.chars)) break;
      picked.unshift({ role: usable[i].role, content: usable[i].content });
      chars += size;
    }
    while (picked.length > 1 && picked[0].role !== "user") picked.shift(); // the user speaks first
    return picked;
  }

  async function errorMessage(response) {
    let message = `The server answered ${response.status}.`;
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (_) { /* not JSON: keep the generic message */ }
    if (response.status === 429) {
      const wait = parseInt(response.headers.get("Retry-After") || "", 10);
      message = Number.isFinite(wait)
        ? `Too many messages. Please try again in ${wait} second${wait === 1 ? "" : "s"}.`
        : "Too many messages. Please try again in a moment.";
    }
    return message;
  }

  function undoSend(text) {
    // The message did not get through: take it out of the thread and give it back to the input.
    thread = thread.slice(0, -1);
    saveThread();
    renderThread();
    if (!input.value.trim()) input.value = text;
    autosize();
  }

  async function send(text) {
    if (controller || !text.trim()) return;
    hideError();
    const sentThread = thread; // "New chat" during the reply replaces it: then this reply is dropped
    const userMessage = { role: "user", content: text };
    thread.push(userMessage);
    saveThread();
    addView(userMessage);
    input.value = "";
    autosize();
    followStream = true;
    scrollToEnd(true);

    controller = new AbortController();
    streamId = "";
    setStreaming(true);
    setStatus("Assistant is replying…");
    let reply = null;
    let view = null;
    try {
      const response = await fetch(base + "/api/chat", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ messages: history() }),
        signal: controller.signal,
      });
      if (!response.ok) {
        undoSend(text);
        showError(await errorMessage(response));
        setStatus("");
        return;
      }
      streamId = response.headers.get("X-Stream-Id") || "";
      const meta = {
        mode: response.headers.get("X-Terminal-Mode") || "live",
        reason: response.headers.get("X-Terminal-Reason") || "",
        model: response.headers.get("X-Terminal-Model") || "",
        streamId, bytes: 0, streaming: true, // until it ends: a reload continues it from meta.bytes
      };
      showMode(meta);
      reply = { role: "assistant", content: "", meta };
      thread.push(reply);
      view = addView(reply);
      saveThread(); // from its first byte on, a reload re-attaches to this reply
      await follow(reply, view, response, sentThread);
    } catch (error) {
      const stopped = error && error.name === "AbortError";
      if (thread !== sentThread) {
        // The user started a new chat: nothing to report.
      } else if (!reply) {
        if (stopped) {
          setStatus("Stopped.");
          thread.push({ role: "assistant", content: "", meta: { stopped: true } });
          addView(thread[thread.length - 1]);
        } else {
          undoSend(text);
          showError("Could not reach the server. Check your connection.", text);
          setStatus("");
        }
      } else {
        showError("The connection was lost during the reply.", text);
      }
    } finally {
      controller = null;
      setStreaming(false);
      if (thread === sentThread) saveThread();
      input.focus();
    }
  }

  // Show a reply as it streams, from ``response`` (or, after a reload, from where it was), into ``view``.
  // A connection lost mid-reply is resumed from the bytes received (GET /api/chat/streams/<id>?offset=),
  // retrying with backoff for RESUME_FOR_MS; then the text so far stays, labelled "connection lost".
  async function follow(reply, view, response, sentThread) {
    const meta = reply.meta;
    view.classList.add("streaming");
    const content = view.querySelector(".content");
    let lostSince = 0;
    let delay = 250;
    try {
      for (;;) {
        try {
          if (!response) response = await reconnect(meta);
          if (response) {
            await readBody(response, reply, content);
            break; // the whole reply
          }
          lostSince = 0;
          break; // the reply is gone from the server: keep the text so far
        } catch (error) {
          if (error && error.name === "AbortError") throw error;
          response = null;
          lostSince = lostSince || Date.now();
          if (!meta.streamId || Date.now() - lostSince > RESUME_FOR_MS) break;
          setStatus("Connection lost: reconnecting…");
          await sleep(delay);
          delay = Math.min(delay * 2, 4000);
        }
      }
      if (response) {
        const cut = reply.content.lastIndexOf(CUT_SHORT_MARK);
        if (cut >= 0) {
          reply.content = reply.content.slice(0, cut);
          meta.cutShort = true;
        }
        setStatus(meta.cutShort ? "The reply was cut short." : "");
      } else {
        meta.interrupted = true;
        setStatus("");
        if (lostSince) throw new Error("connection lost");
      }
    } catch (error) {
      if (error && error.name === "AbortError") {
        meta.stopped = true;
        setStatus("Stopped.");
      } else if (thread === sentThread) {
        meta.interrupted = true;
        throw error;
      }
    } finally {
      if (meta.streamId && reply.content) meta.ratingId = meta.streamId; // what its rating names
      delete meta.streaming;
      delete meta.bytes;
      delete meta.streamId;
      view.classList.remove("streaming");
      renderContent(content, reply.content);
      renderTag(view, reply);
      renderRating(view, reply);
      scrollToEnd(false);
    }
  }

  // GET the rest of the reply from meta.bytes; null when the server no longer has it.
  async function reconnect(meta) {
    const path = `${base}/api/chat/streams/${encodeURIComponent(meta.streamId)}?offset=${meta.bytes}`;
    const response = await fetch(path, { signal: controller.signal });
    if (response.ok) return response;
    if (response.status === 404 || response.status === 400) return null;
    throw new Error(`the server answered ${response.status}`); // 429, 503: try again
  }

  async function readBody(response, reply, content) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder("utf-8"); // stream mode: a character cut between chunks waits
    let recent = new Uint8Array(0); // the last bytes received, to know where the last whole character ends
    let received = reply.meta.bytes;
    let pending = false;
    let savedAt = Date.now();
    const paint = () => {
      pending = false;
      renderContent(content, reply.content);
      scrollToEnd(false);
    };
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      reply.content += decoder.decode(value, { stream: true });
      received += value.length;
      recent = lastBytes(recent, value);
      reply.meta.bytes = received - incompleteTail(recent); // offsets must fall between characters
      if (!pending) {
        pending = true;
        requestAnimationFrame(paint);
      }
      if (Date.now() - savedAt > 500) {
        savedAt = Date.now();
        saveThread(); // a crash continues from here; a reload or a closed tab saves on pagehide too
      }
    }
    reply.content += decoder.decode();
  }

  function lastBytes(recent, value) {
    const joined = new Uint8Array(recent.length + value.length);
    joined.set(recent);
    joined.set(value, recent.length);
    return joined.slice(-3);
  }

  // How many bytes at the end begin a UTF-8 character that has not fully arrived.
  function incompleteTail(bytes) {
    for (let back = 1; back <= bytes.length; back += 1) {
      const byte = bytes[bytes.length - back];
      if ((byte & 0xc0) === 0x80) continue; // a continuation byte: its lead is further back
      const size = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
      return size > back ? back : 0;
    }
    return 0;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // After a reload: a reply that was still streaming goes on where it was.
  async function continueReply() {
    const reply = thread[thread.length - 1];
    if (!reply || reply.role !== "assistant" || !reply.meta || !reply.meta.streaming) return;
    const views = threadEl.querySelectorAll(".message");
    const view = views[views.length - 1];
    if (!reply.meta.streamId || !view) {
      delete reply.meta.streaming;
      reply.meta.interrupted = true;
      saveThread();
      renderThread();
      return;
    }
    const sentThread = thread;
    controller = new AbortController();
    streamId = reply.meta.streamId;
    setStreaming(true);
    setStatus("Reconnecting to the reply…");
    try {
      await follow(reply, view, null, sentThread);
    } catch (_) {
      showError("The connection was lost during the reply.");
    } finally {
      controller = null;
      setStreaming(false);
      if (thread === sentThread) saveThread();
    }
  }

  function stop() {
    if (!controller) return;
    // Hanging up alone would leave the reply running on the server for RESUME_GRACE seconds, for a
    // client that comes back: Stop asks the server to end it now. Fire and forget.
    if (streamId) {
      fetch(base + "/api/chat/streams/" + encodeURIComponent(streamId) + "/stop", { method: "POST", keepalive: true })
        .catch(() => {});
    }
    controller.abort();
  }

  // -- wiring ------------------------------------------------------------------------------

  function autosize() {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!controller) send(input.value);
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!controller) send(input.value);
    }
  });
  input.addEventListener("input", autosize);

  root.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && controller) {
      event.preventDefault();
      stop();
    }
  });
  stopButton.addEventListener("click", stop);

  $("new-chat").addEventListener("click", () => {
    stop();
    thread = [];
    saveThread();
    renderThread();
    hideError();
    setStatus("New chat started.");
    modeBadge.hidden = true;
    input.focus();
  });

  root.querySelectorAll(".suggestion").forEach((button) => {
    button.addEventListener("click", () => { if (!controller) send(button.dataset.text || button.textContent); });
  });

  // Leaving or hiding the page saves the reply in progress as far as it got: a reload at any moment
  // continues it from there (the periodic save above is for a browser that dies without pagehide).
  // Only while a reply streams here: otherwise this page's thread may be older than what another tab
  // of the same site saved since, and must not overwrite it.
  const saveReplyInProgress = () => { if (controller) saveThread(); };
  window.addEventListener("pagehide", () => {
    saveReplyInProgress();
    leaving = true;
  });
  window.addEventListener("pageshow", () => { leaving = false; }); // back from the back-forward cache
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") saveReplyInProgress();
  });

  renderThread();
  const last = [...thread].reverse().find((m) => m.role === "assistant" && m.meta && m.meta.mode);
  if (last) showMode(last.meta);
  if (options.focus !== false) input.focus();
  continueReply();
 }

  window.streamchatChat = { start };
  // The page's own script tag says so; inside the widget's bundle the widget starts it, in its shadow root.
  if (document.currentScript && document.currentScript.dataset.start === "page") {
    document.addEventListener("DOMContentLoaded", () => start(document));
  }
})();
