// The embeddable widget's start: a launcher button and a chat panel in a Shadow DOM on the host page.
// Served inside /widget.js (streamchat/web/widget.py), after markdown.js and chat.js, with the chat's
// markup and styles: `boot(script, service, css, markup)`. The chat itself is the page's (chat.js),
// started in the shadow root against the service's origin. Under a strict host CSP this needs only
// script-src and connect-src for the service: styles are a constructed stylesheet, nothing is inline.
"use strict";

function streamchatBoot(script, service, css, markup) {
  const data = script.dataset;
  const host = document.createElement("streamchat-chat");
  const shadow = host.attachShadow({ mode: "open" });
  const sheet = new CSSStyleSheet();
  sheet.replaceSync(css);
  shadow.adoptedStyleSheets = [sheet];
  if (data.accent && CSS.supports("color", data.accent)) host.style.setProperty("--accent", data.accent);

  const template = document.createElement("template");
  template.innerHTML = markup; // the service's own markup (_chat.html), never a reply's text
  const panel = document.createElement("div");
  panel.className = "panel";
  panel.setAttribute("role", "dialog");
  panel.append(template.content);
  if (data.title) panel.querySelector(".title").textContent = data.title;
  if (data.greeting) panel.querySelector(".greeting").textContent = data.greeting;
  panel.setAttribute("aria-label", panel.querySelector(".title").textContent || "Chat");
  shadow.append(panel);

  // Started at once, even closed: a reply that was streaming when the host page reloaded goes on.
  window.streamchatChat.start(shadow, { base: service, focus: false });

  const mount = data.mount ? document.querySelector(data.mount) : null;
  if (mount) {
    host.classList.add("inline");
    panel.classList.add("inline");
    mount.append(host);
    return;
  }
  panel.classList.add(data.position === "bottom-left" ? "left" : "right");
  const launcher = document.createElement("button");
  launcher.type = "button";
  launcher.className = "launcher " + (data.position === "bottom-left" ? "left" : "right");
  launcher.setAttribute("aria-expanded", "false");
  launcher.setAttribute("aria-label", "Open the chat");
  launcher.textContent = "Chat";
  const close = document.createElement("button");
  close.type = "button";
  close.className = "ghost close";
  close.setAttribute("aria-label", "Close the chat");
  close.textContent = "×";
  shadow.querySelector(".bar").append(close);
  const OPEN_KEY = "streamchat.widget.open"; // open stays open across the host's page loads
  const open = (opened) => {
    panel.hidden = !opened;
    launcher.setAttribute("aria-expanded", String(opened));
    try { sessionStorage.setItem(OPEN_KEY, opened ? "1" : ""); } catch (_) { /* storage off: fine */ }
    if (opened) shadow.getElementById("input").focus();
  };
  launcher.addEventListener("click", () => open(panel.hidden));
  close.addEventListener("click", () => open(false));
  shadow.prepend(launcher);
  let wasOpen = false;
  try { wasOpen = sessionStorage.getItem(OPEN_KEY) === "1"; } catch (_) { /* storage off */ }
  open(wasOpen || (data.open !== undefined && data.open !== "false"));
  (document.body || document.documentElement).append(host);
}
