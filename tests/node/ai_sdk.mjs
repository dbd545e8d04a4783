// The Vercel AI SDK's own transports (the `ai` package, pinned in package.json) talking to the service.
// Run by tests/test_ai_sdk.py: `node ai_sdk.mjs SCENARIO JSON-ARGUMENTS`; prints one JSON object.
//   send       {api, transport: "default"|"text", chatId, text}: one message; the final UI message
//   hangup     {api, otherApi, transport, chatId, text, afterDeltas}: hang up after some deltas, then
//              reconnectToStream through the other instance; the resumed message
//   reconnect  {api, chatId}: reconnectToStream with nothing in progress (null expected)
//   regenerate {api, chatId, messages, messageId}: trigger regenerate-message
import { DefaultChatTransport, TextStreamChatTransport, readUIMessageStream } from "ai";

const [scenario, raw] = process.argv.slice(2);
const args = JSON.parse(raw);

function transport(kind, api) {
  return kind === "text" ? new TextStreamChatTransport({ api }) : new DefaultChatTransport({ api });
}

function userMessage(id, text) {
  return { id, role: "user", parts: [{ type: "text", text }] };
}

async function lastMessage(stream) {
  let last = null;
  for await (const message of readUIMessageStream({ stream, onError: (error) => { throw error; } })) {
    last = message;
  }
  return summary(last);
}

function summary(message) {
  if (!message) return null;
  const text = message.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
  return { text, metadata: message.metadata ?? null, partTypes: message.parts.map((p) => p.type) };
}

async function send() {
  const stream = await transport(args.transport, args.api).sendMessages({
    chatId: args.chatId, messages: [userMessage("u1", args.text)], trigger: "submit-message",
    messageId: undefined, abortSignal: undefined,
  });
  return lastMessage(stream);
}

async function hangup() {
  const controller = new AbortController();
  const stream = await transport(args.transport, args.api).sendMessages({
    chatId: args.chatId, messages: [userMessage("u1", args.text)], trigger: "submit-message",
    messageId: undefined, abortSignal: controller.signal,
  });
  const reader = stream.getReader();
  let partial = "";
  let deltas = 0;
  while (deltas < args.afterDeltas) {
    const { value, done } = await reader.read();
    if (done) break;
    if (value.type === "text-delta") {
      partial += value.delta;
      deltas += 1;
    }
  }
  controller.abort(); // the page reloads mid-reply
  await reader.cancel().catch(() => {});
  const resumed = await transport(args.transport, args.otherApi).reconnectToStream({ chatId: args.chatId });
  return { partial, resumed: resumed === null ? null : await lastMessage(resumed) };
}

async function reconnect() {
  const resumed = await transport(args.transport || "default", args.api).reconnectToStream({ chatId: args.chatId });
  return { resumed: resumed === null ? null : await lastMessage(resumed) };
}

async function regenerate() {
  const stream = await transport("default", args.api).sendMessages({
    chatId: args.chatId, messages: args.messages, trigger: "regenerate-message", messageId: args.messageId,
    abortSignal: undefined,
  });
  return lastMessage(stream);
}

const scenarios = { send, hangup, reconnect, regenerate };
const deadline = setTimeout(() => { console.error("timed out"); process.exit(3); }, 30000);
try {
  console.log(JSON.stringify(await scenarios[scenario]()));
} catch (error) {
  console.log(JSON.stringify({ error: String(error && error.message || error) }));
} finally {
  clearTimeout(deadline);
}
