"""The house's rules: layers import downwards only, the domain needs no web stack, the README's table is the code's."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from servers import REPO
from streamchat.config import SETTINGS, no_provider_hint, settings_table_markdown
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
    "testing": {"errors", "domain"},
}
WEB_STACK = ("flask", "werkzeug", "gevent", "gunicorn", "flask_limiter")


def package_imports(path: Path) -> set[str]:
    """Return the ``streamchat.X`` parts that the module at ``path`` imports."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
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
        found.update(name.split(".")[1] for name in names if name.startswith("streamchat.") and name.count("."))
    return found


def part_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_upward(path):
    part = part_of(path)
    if part == "__init__":
        return
    upward = package_imports(path) - ALLOWED[part] - {part}
    assert not upward, f"{path.relative_to(REPO)} ({part}) imports {sorted(upward)}"


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


def test_the_readme_configuration_table_is_the_one_the_code_generates():
    readme = (REPO / "README.md").read_text()
    assert settings_table_markdown() in readme, (
        "README.md's configuration table differs from the settings: paste the output of "
        "`.venv/bin/python -m streamchat.config` into it")


def test_every_provider_fact_comes_from_its_class():
    envs = {setting.env: setting for setting in SETTINGS}
    for cls in PROVIDERS:
        assert envs[cls.key_env_var].secret
        assert envs[cls.base_url_env_var].default == cls.default_base_url
        assert envs[cls.model_env_var].default == cls.default_model
        assert cls.key_env_var in no_provider_hint()
