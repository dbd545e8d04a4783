"""The Vercel AI SDK's own transports against the service: the real ``ai`` package (pinned) in Node.

Two gunicorn instances share one redis-server: a reply hung up on one instance is resumed through the
other, as ``useChat({resume: true})`` does after a reload. ``tests/node/ai_sdk.mjs`` runs each scenario
and prints what the SDK assembled.
"""

import json
import shutil
import subprocess

import pytest

from servers import REPO, Gunicorn, chat_body
from streamchat.testing.processes import MissingComponent

pytestmark = [pytest.mark.processes, pytest.mark.redis]

NODE_DIR = REPO / "tests" / "node"
TEXT = "Grüße aus Köln ✓ — 東京 🙂"  # multi-byte characters, split wherever the reply's pieces fall


def node(scenario: str, **args) -> dict:
    if not shutil.which("node") or not (NODE_DIR / "node_modules" / "ai" / "package.json").exists():
        raise MissingComponent("node and the ai package (tests/node): ./run-tests installs them")
    done = subprocess.run(["node", str(NODE_DIR / "ai_sdk.mjs"), scenario, json.dumps(args)], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def question(**fake) -> str:
    return chat_body("hi", **fake)["messages"][0]["content"]


@pytest.fixture(scope="module")
def pair(fake, log_dir, shared_redis):
    env = dict(OPENAI_BASE_URL=f"{fake.url}/v1", REDIS_URL=shared_redis.url, RESUME_GRACE="5", LLM_COOLDOWN="0")
    with Gunicorn(log_dir, workers=2, **env) as a, Gunicorn(log_dir, workers=2, **env) as b:
        yield a, b


def test_both_transports_assemble_the_exact_text_and_the_default_one_sees_the_metadata(pair):
    a, _ = pair
    default = node("send", api=f"{a.url}/api/chat/ui", transport="default", chatId="sdk-default",
                   text=question(text=TEXT, token_chars=3, id="sdk-default"))
    assert default["text"] == TEXT and default["partTypes"] == ["text"]
    metadata = default["metadata"]
    assert metadata["mode"] == "live" and metadata["provider"] == "openai" and metadata["ended"] == "complete"
    assert len(metadata["streamId"]) >= 22
    plain = node("send", api=f"{a.url}/api/chat", transport="text", chatId="sdk-text",
                 text=question(text=TEXT, token_chars=3, id="sdk-text"))
    assert plain["text"] == TEXT


def test_a_fallback_and_a_cut_short_reply_arrive_as_text_with_their_metadata_and_no_error(pair):
    a, _ = pair
    fallback = node("send", api=f"{a.url}/api/chat/ui", transport="default", chatId="sdk-fallback",
                    text=question(status=503, id="sdk-fallback"))
    assert "error" not in fallback and fallback["text"]
    assert fallback["metadata"]["mode"] == "fallback" and fallback["metadata"]["reason"] == "upstream_error"
    cut = node("send", api=f"{a.url}/api/chat/ui", transport="default", chatId="sdk-cut",
               text=question(text="one two three four", fault="drop_after", after=2, id="sdk-cut"))
    assert "error" not in cut and cut["text"].startswith("one two \n\n[Reply cut short:")
    assert cut["metadata"]["mode"] == "live" and cut["metadata"]["ended"] == "cut_short"


@pytest.mark.parametrize("transport, path", [("default", "/api/chat/ui"), ("text", "/api/chat")])
def test_reconnect_after_a_hang_up_gets_the_whole_reply_through_the_other_instance(pair, fake, transport, path):
    a, b = pair
    chat_id = f"sdk-reload-{transport}"
    resumed = node("hangup", api=f"{a.url}{path}", otherApi=f"{b.url}{path}", transport=transport, chatId=chat_id,
                   text=question(text=TEXT * 4, token_chars=2, interval_ms=40, id=chat_id), afterDeltas=3)
    assert resumed["partial"] and TEXT.startswith(resumed["partial"])
    assert resumed["resumed"]["text"] == TEXT * 4  # replayed from its start, once
    if transport == "default":
        assert resumed["resumed"]["metadata"]["ended"] == "complete"
    assert [r.id for r in fake.records].count(chat_id) == 1
    # Nothing in progress any more: the SDK's reconnect gets its 204, as null.
    assert node("reconnect", api=f"{b.url}{path}", chatId=chat_id) == {"resumed": None}
    assert node("reconnect", api=f"{b.url}{path}", chatId="never-seen") == {"resumed": None}


def test_regenerate_answers_the_conversation_before_the_message_again(pair, fake):
    a, _ = pair

    def message(id: str, role: str, text: str) -> dict:
        return {"id": id, "role": role, "parts": [{"type": "text", "text": text}]}

    for tag, cut in (("sdk-regen", False), ("sdk-regen-cut", True)):
        conversation = [message("u1", "user", "one two"), message("a1", "assistant", "three"),
                        message("u2", "user", question(id=tag)), message("a2", "assistant", "an answer to redo")]
        # The SDK's own regenerate() sends the conversation already cut before the message it names.
        sent = conversation[:3] if cut else conversation
        again = node("regenerate", api=f"{a.url}/api/chat/ui", chatId=tag, messages=sent, messageId="a2")
        assert again["text"] and again["metadata"]["mode"] == "live"
        assert fake.find(tag).prompt_tokens == len(" ".join(["one two", "three", question(id=tag)]).split())
