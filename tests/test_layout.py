"""The house's rules: layers and rooms import downwards only, the domain needs no web stack, settings are declared once,
the docs are generated from the code where they can be and every link leads somewhere."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from servers import REPO
from streamchat.config import SETTINGS, no_provider_hint, settings_table_markdown
from streamchat.config import Settings
from streamchat.domain.provider_facts import PROVIDER_FACTS
from streamchat.domain.providers import PROVIDERS

PACKAGE = REPO / "streamchat"
#: What each part of the package may import from the package (besides itself).
ALLOWED = {
    "errors": set(),
    "redaction": set(),
    "logformat": set(),
    "transport": {"errors"},
    "domain": {"errors", "redaction", "transport"},
    "config": {"domain", "errors"},
    "server": {"errors", "config", "logformat"},
    "shared": {"errors", "redaction", "domain"},
    "web": {"errors", "redaction", "logformat", "config", "domain", "server", "shared"},
    "testing": {"errors", "domain", "config"},
    "commands": {"config", "domain", "shared"},
}
#: Inside ``web``: what each room may import from the others (besides itself and the parts above).
WEB_ROOMS = {
    "service": set(),
    "errors": {"service", "guards"},
    "framing": set(),
    "guards": {"service"},
    "operations": {"service", "guards", "errors"},
    "answers": set(),
    "opening": {"service", "guards", "operations", "framing", "answers"},
    "surfaces": {"service", "errors", "guards", "operations", "opening", "framing"},
}
WEB_STACK = ("flask", "werkzeug", "gevent", "gunicorn", "flask_limiter")


def imported_modules(path: Path) -> set[str]:
    """Return the full names of the ``streamchat`` modules (or names in them) that the module at ``path`` imports."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    tree = ast.parse(path.read_text())
    # Imports for type annotations only (``if TYPE_CHECKING:``) never run: they are no dependency.
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                   for inner in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module or not node.level else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.startswith("streamchat."))
    return found


def package_imports(path: Path) -> set[str]:
    """Return the ``streamchat.X`` parts that the module at ``path`` imports."""
    return {name.split(".")[1] for name in imported_modules(path)}


def web_room_imports(path: Path) -> set[str]:
    """Return the rooms of ``streamchat.web`` (``streamchat.web.X``) that the module at ``path`` imports."""
    return {name.split(".")[2] for name in imported_modules(path) if name.startswith("streamchat.web.")}


def part_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_upward(path):
    part = part_of(path)
    if part == "__init__":
        return
    upward = package_imports(path) - ALLOWED[part] - {part}
    assert not upward, f"{path.relative_to(REPO)} ({part}) imports {sorted(upward)}"


WEB = PACKAGE / "web"


@pytest.mark.parametrize("path", sorted(WEB.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_no_web_room_imports_a_room_that_builds_on_it(path):
    room = path.relative_to(WEB).parts[0].removesuffix(".py")
    if room == "__init__":
        return
    backward = web_room_imports(path) - WEB_ROOMS[room] - {room}
    assert not backward, f"{path.relative_to(REPO)} ({room}) imports {sorted(backward)}"


def test_every_package_docstring_names_every_module_it_holds():
    for init in [PACKAGE / "__init__.py", *sorted(PACKAGE.rglob("*/__init__.py"))]:
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        parts = sorted(p.stem if p.is_file() else p.name for p in init.parent.iterdir()
                       if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists())
        missing = [part for part in parts if f"``{part}``" not in doc]
        assert not missing, f"{init.relative_to(REPO)} does not name {missing}"


def test_the_web_rooms_are_the_ones_the_rules_know():
    assert sorted(p.stem if p.is_file() else p.name for p in WEB.iterdir()
                  if p.suffix == ".py" or (p / "__init__.py").exists()) == sorted(["__init__", *WEB_ROOMS])


def test_no_module_reaches_into_app_extensions_but_the_service_accessor():
    users = [p.relative_to(REPO) for p in PACKAGE.rglob("*.py")
             if "extensions[" in p.read_text() or "extensions.get(" in p.read_text()]
    assert users == [Path("streamchat/web/service.py")]


def test_the_domain_imports_without_flask_werkzeug_gevent_or_gunicorn():
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                     for part in ("domain", "transport") for p in (PACKAGE / part).rglob("*.py"))
    modules += ["streamchat.errors", "streamchat.redaction", "streamchat.config"]
    probe = f"""
import importlib, importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {WEB_STACK!r}:
            raise ImportError("the domain must not import " + name)
sys.meta_path.insert(0, Refuse())
for name in {modules!r}:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {WEB_STACK!r})))
"""
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_the_configuration_page_table_is_the_one_the_code_generates():
    page = (REPO / "docs" / "configuration.md").read_text()
    assert settings_table_markdown() in page, (
        "docs/configuration.md's table differs from the settings: paste the output of "
        "`.venv/bin/python -m streamchat.config` into it")


DOCS = ["configuration", "deploying", "http-api", "operations", "performance", "architecture"]


def _slug(heading: str) -> str:
    # GitHub's anchors: lower case, punctuation dropped, spaces to hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)} | set(
        re.findall(r'<a id="([^"]+)"', text))


def test_the_readme_is_a_front_door_whose_links_all_lead_somewhere():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    first_screen = "\n".join(readme.splitlines()[:20])
    assert "./run " in first_screen and "./run-tests " in first_screen
    for page in DOCS:
        assert f"(docs/{page}.md)" in readme, f"the README's contents do not link docs/{page}.md"
    for source in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = source.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            linked = (source.parent / path).resolve() if path else source
            assert linked.exists(), f"{source.name} links {target}: no such file"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked.read_text()), f"{source.name} links {target}: no such heading"


def test_every_provider_fact_comes_from_its_declaration():
    envs = {setting.env: setting for setting in SETTINGS}
    assert [cls.facts for cls in PROVIDERS] == list(PROVIDER_FACTS)
    for facts in PROVIDER_FACTS:
        assert envs[facts.key_env_var].secret
        assert envs[facts.base_url_env_var].default == facts.default_base_url
        assert envs[facts.model_env_var].default == facts.default_model
        assert facts.key_env_var in no_provider_hint()
    assert [cls.name for cls in PROVIDERS] == [facts.name for facts in PROVIDER_FACTS]


def test_every_setting_is_a_declared_attribute_with_a_type():
    annotations = Settings.__annotations__
    derived = ("upstreams", "explicitly_set")  # worked out from the settings, not read
    assert [setting.attr for setting in SETTINGS] == [name for name in annotations if name not in derived]
    assert all(isinstance(annotations[setting.attr], str) and annotations[setting.attr] for setting in SETTINGS)


def test_reading_the_settings_imports_no_http_stack_so_gunicorns_master_may():
    probe = """
import json, sys
from streamchat.config import SERVER_SETTINGS, parse_settings, read_env_file
read_env_file()
parse_settings(SERVER_SETTINGS)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("ssl", "requests", "urllib3", "gevent"))))
"""
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "ENV_FILE": ""})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_no_module_but_the_settings_reads_a_setting_or_the_env_file_itself():
    # One source per setting: every reader goes through streamchat.config (the launcher, gunicorn.conf.py, the
    # worker, wsgi.py, the app); os.environ is read elsewhere only for what is not a setting.
    readers = [REPO / "gunicorn.conf.py", REPO / "wsgi.py", REPO / "app.py", *PACKAGE.rglob("*.py")]
    names = {setting.env for setting in SETTINGS}
    offenders = []
    for path in readers:
        text = path.read_text()
        if path.name != "config.py" and ("load_dotenv" in text or any(
                f'environ.get("{name}"' in text or f"environ.get('{name}'" in text or f'environ["{name}"]' in text
                for name in names)):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_bench_has_no_import_cycle_and_starts_the_service_with_the_tests_harness():
    bench = REPO / "bench"
    graph = {}
    for path in bench.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bench"):
                names.update([node.module] if node.module != "bench" else [f"bench.{a.name}" for a in node.names])
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.startswith("bench."))
        graph[f"bench.{path.stem}"] = names - {f"bench.{path.stem}"}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    assert [module for module in graph if reaches(module, module)] == []
    common = (bench / "common.py").read_text()
    assert "from streamchat.testing.processes import" in common and "subprocess.Popen([sys.executable, \"-m\", \"gunicorn\"" not in common


def test_a_worker_without_redis_url_does_not_load_the_redis_library():
    # 4.3 MB of a worker's memory: loaded by shared.redis.connect, only when REDIS_URL is set.
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RATELIMIT_STORAGE_URI")}
    code = ("import sys, app; a = app.create_app(); c = a.test_client(); "
            "c.post('/api/chat', json={'messages': [{'role': 'user', 'content': 'hi'}]}).get_data(); "
            "print('redis loaded:', 'redis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert "redis loaded: False" in out.stdout, out.stderr
