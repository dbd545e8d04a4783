"""The rules responder: matching, choosing, validating, reloading and the CLI."""

import functools
import os
import subprocess
import textwrap

import pytest

from servers import REPO
from streamchat.domain.rules import RulesError, RulesStore, load_rules, normalize, parse_rules

RULES = textwrap.dedent("""\
    default: ["Sorry, I don't know."]
    rules:
      - name: hours
        keywords: [hours, open]
        replies: ["We open at nine."]
      - name: opening-hours
        keywords: ["opening hours"]
        replies: ["Monday to Friday, 9 to 5."]
      - name: urgent
        priority: 5
        keywords: [urgent]
        replies: ["Call us now."]
      - name: greeting
        keywords: [hello, "good morning", café]
        replies: ["Hello!", "Hi again!", "Hey!"]
      - name: order-number
        patterns: ['\\border\\s+#?\\d{4,}']
        replies: ["I see an order number."]
      - name: shoes-topic
        scope: conversation
        keywords: [shoes]
        replies: ["Still on shoes: sizes 36 to 46."]
    """)


def ask(rules, *turns):
    messages = []
    for n, text in enumerate(turns):
        messages.append({"role": "user" if n % 2 == 0 else "assistant", "content": text})
    return rules.reply(messages)


@pytest.fixture
def rules():
    return parse_rules(RULES)


def test_normalize():
    assert normalize("Héllo, WORLD!  Crème-brûlée") == " hello world creme brulee "


@pytest.mark.parametrize("text, rule", [
    ("HELLO there", "greeting"),
    ("héllo!!", "greeting"),
    ("Good-Morning :)", "greeting"),
    ("un CAFE s'il vous plait", "greeting"),
    ("what are your opening hours?", "opening-hours"),  # the phrase outscores the single word
    ("when are you open", "hours"),
    ("urgent: hello", "urgent"),  # priority beats score
    ("where is order #12345", "order-number"),
    ("shelloac", "default"),  # whole words only
    ("nothing relevant", "default"),
])
def test_matching(rules, text, rule):
    assert ask(rules, text)[0] == rule


def test_ties_go_to_the_first_rule_in_the_file():
    rules = parse_rules("default: [d]\nrules:\n  - {name: a, keywords: [x], replies: [a]}\n"
                        "  - {name: b, keywords: [x], replies: [b]}\n")
    assert ask(rules, "x")[0] == "a"


def test_replies_rotate(rules):
    assert [ask(rules, "hello")[1] for _ in range(4)] == ["Hello!", "Hi again!", "Hey!", "Hello!"]


def test_latest_scope_ignores_earlier_turns_but_conversation_scope_does_not(rules):
    assert ask(rules, "hello", "Hi!", "what now")[0] == "default"
    assert ask(rules, "do you sell shoes", "We do.", "what sizes?")[0] == "shoes-topic"


@pytest.mark.parametrize("text, line, words", [
    ("rules: [\n  - {name: a\n", 2, "YAML syntax error"),
    ("default: [x]\nrules: []\n", 2, "non-empty list"),
    ("default: [x]\nrules:\n  - name: a\n    keywords: [x]\n", 3, "replies must be"),
    ("default: [x]\nrules:\n  - name: a\n    keywords: [x]\n    replies: [ok]\n    patterns: ['(']\n", 6,
     "not a valid regular expression"),
    ("default: [x]\nrules:\n  - name: a\n    keywords: [x]\n    replies: [ok]\n    priority: high\n", 6,
     "priority"),
    ("default: [x]\nrules:\n  - name: a\n    keywords: [x]\n    replies: [ok]\n    reply: [typo]\n", 6,
     "unknown key 'reply'"),
    ("default: [x]\nrules:\n  - name: a\n    replies: [ok]\n", 3, "needs 'keywords' or 'patterns'"),
    ("rules:\n  - {name: a, keywords: [x], replies: [ok]}\n", 1, "default must be"),
    ("- just a list\n", 1, "must be a mapping"),
])
def test_invalid_files_name_the_line(text, line, words):
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    problem = next(p for p in info.value.problems if words in p.message)
    assert problem.line == line


def test_every_problem_is_reported_at_once():
    text = "default: [x]\nrules:\n  - {name: a, keywords: [x]}\n  - {name: b, patterns: ['[']}\n"
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    assert len(info.value.problems) >= 3


def test_shipped_rules_are_valid_and_useful():
    rules = load_rules(os.path.join(os.path.dirname(__file__), "..", "rules.yaml"))
    assert ask(rules, "Hello!")[0] == "greeting"
    assert ask(rules, "help")[0] == "help"
    assert ask(rules, "thank you")[0] == "thanks"
    assert ask(rules, "bye")[0] == "bye"
    assert ask(rules, "how do I set the API key?")[0] == "configure-provider"
    assert ask(rules, "are you a bot?")[0] == "what-are-you"
    assert "offline" in ask(rules, "zzz")[1]


def write(path, text):
    path.write_text(text)
    # Make sure the change is seen even within the file system's timestamp granularity.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_store_reloads_on_change_and_keeps_the_last_good_rules(tmp_path):
    path = tmp_path / "rules.yaml"
    write(path, "default: [one]\nrules:\n  - {name: a, keywords: [x], replies: [A]}\n")
    store = RulesStore(str(path))
    assert store.reply([{"role": "user", "content": "q"}]) == ("default", "one")
    write(path, "default: [two]\nrules:\n  - {name: a, keywords: [x], replies: [A]}\n")
    assert store.reply([{"role": "user", "content": "q"}]) == ("default", "two")
    write(path, "default: [three]\nrules: [\n")
    assert store.reply([{"role": "user", "content": "q"}]) == ("default", "two")
    assert store.error and store.error.problems[0].line == 3
    write(path, "default: [four]\nrules:\n  - {name: a, keywords: [x], replies: [A]}\n")
    assert store.reply([{"role": "user", "content": "q"}]) == ("default", "four")
    assert store.error is None


def test_store_without_any_good_rules_still_answers(tmp_path):
    store = RulesStore(str(tmp_path / "missing.yaml"))
    name, text = store.reply([{"role": "user", "content": "hi"}])
    assert name == "builtin" and "offline" in text
    assert "no such file" in str(store.error)


def header_command() -> list[str]:
    """The check command rules.yaml's header shows, as its words."""
    line = next(line for line in (REPO / "rules.yaml").read_text().splitlines() if "Check a file" in line)
    return line.split(":", 1)[1].split()


def test_the_check_command_in_the_rules_header_checks_that_file_only(tmp_path):
    command = header_command()
    assert command[-1] == "rules.yaml"
    # An unrelated bad setting, and a .env with another, are not the rules check's business.
    env = {**os.environ, "CHAT_MAX_MESSAGES": "lots", "ENV_FILE": ""}
    run = functools.partial(subprocess.run, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    result = run(command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("rules.yaml: OK,")
    assert "rules loaded" not in result.stdout + result.stderr  # nothing but the check's own lines
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: [x]\nrules:\n  - name: a\n    keywords: [x]\n    replies: [ok]\n    patterns: ['(']\n")
    result = run([*command[:-1], str(bad)])
    assert result.returncode == 1 and f"{bad}:6:" in result.stderr and "regular expression" in result.stderr
    result = run([*command[:-1], str(tmp_path / "missing.yaml")])
    assert result.returncode == 1 and result.stderr.strip().endswith("missing.yaml: no such file")


def test_the_shipped_sample_rules_are_said_to_be_in_use_until_edited(tmp_path):
    import logging

    from app import create_app

    # The service's logger does not propagate to the root, where caplog listens: listen on it directly.
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("streamchat").addHandler(handler)
    try:
        sample = create_app({"RULES_PATH": str(REPO / "rules.yaml")}).test_client().get("/healthz").get_json()
    finally:
        logging.getLogger("streamchat").removeHandler(handler)
    assert "shipped sample rules are in use" in sample["rules"]["sample"] and sample["status"] == "ok"
    assert any("shipped sample rules are in use" in r.getMessage() for r in records)
    own = tmp_path / "rules.yaml"
    own.write_text((REPO / "rules.yaml").read_text().replace("(Site owner: edit", "(edited:"))
    health = create_app({"RULES_PATH": str(own)}).test_client().get("/healthz").get_json()
    assert "sample" not in health["rules"]
