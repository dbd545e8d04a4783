"""The gunicorn settings the Procfile runs with."""

import gc
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from servers import REPO, clean_env, eventually, free_port, request

CONF = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"


@pytest.fixture
def restore_gc():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_worker_keeps_start_up_objects_out_of_collections_and_collects_young_objects_less_often(restore_gc):
    settings = runpy.run_path(str(CONF))
    assert settings["preload_app"] is False
    settings["post_worker_init"](worker=None)
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == settings["GC_YOUNG_THRESHOLD"] > 700


def test_the_worker_class_is_gevents_worker_with_a_cheaper_client_write():
    from gunicorn.util import load_class
    from gunicorn.workers.ggevent import GeventWorker

    from streamchat.server.worker import ClientSocket

    worker = load_class(runpy.run_path(str(CONF))["worker_class"])
    assert issubclass(worker, GeventWorker) and worker.handle is not GeventWorker.handle
    assert ClientSocket.sendall is not ClientSocket.__mro__[1].sendall


def serve(env_overrides: dict[str, str], tmp_path, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the launcher as the Procfile does; it is expected to stop by itself."""
    return subprocess.run([sys.executable, "-m", "streamchat.server.serve"], cwd=REPO, capture_output=True, text=True,
                          env=clean_env(**env_overrides), timeout=timeout)


@pytest.mark.parametrize("variable, value, expected", [
    ("WEB_CONCURRENCY", "two", "WEB_CONCURRENCY='two' is invalid: is not a whole number (for example WEB_CONCURRENCY=1)"),
    ("PORT", "80800", "PORT='80800' is invalid: must be a port number, 1-65535 (for example PORT=8000)"),
    ("DRAIN_SECONDS", "-1", "DRAIN_SECONDS='-1' is invalid: must be a positive number of seconds (for example DRAIN_SECONDS=20)"),
    ("OPENAI_API_KEY", "sk-\u201cpasted", "OPENAI_API_KEY=*** is invalid"),
])
def test_a_bad_setting_is_one_line_without_a_traceback_and_a_non_zero_exit(tmp_path, variable, value, expected):
    # From a .env file as from the environment: gunicorn's own settings are read from it like every other.
    env_file = tmp_path / ".env"
    env_file.write_text(f"{variable}={value}\n")
    for overrides in ({variable: value}, {"ENV_FILE": str(env_file)}):
        result = serve(overrides, tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"streamchat: configuration error: {expected}"] or (
            len(result.stderr.splitlines()) == 1 and expected in result.stderr)
        assert "Traceback" not in result.stdout + result.stderr


def test_plain_gunicorn_reads_the_same_table_and_says_a_bad_server_setting_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"], cwd=REPO,
                            capture_output=True, text=True, env=clean_env(PORT="80800"), timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["streamchat: configuration error: PORT='80800' is invalid: must be a port "
                                          "number, 1-65535 (for example PORT=8000)"]


def test_the_env_file_is_read_once_the_launcher_hands_its_values_on(tmp_path, monkeypatch):
    import streamchat.config as config

    env_file = tmp_path / ".env"
    env_file.write_text("CHAT_TITLE=From the file\n")
    monkeypatch.setenv("ENV_FILE", str(env_file))
    monkeypatch.setattr(config, "_env_file_read", False)
    config.read_env_file()
    assert config.parse_settings(["CHAT_TITLE"]).chat_title == "From the file"
    env_file.write_text("CHAT_TITLE=Changed\n")
    monkeypatch.delenv("CHAT_TITLE")
    config.read_env_file()  # a second reader in the same process (wsgi.py after gunicorn.conf.py) reads nothing
    assert config.parse_settings(["CHAT_TITLE"]).chat_title == "Assistant"


@pytest.mark.processes
def test_server_settings_come_from_the_env_file_and_counting_in_memory_with_workers_is_warned(tmp_path):
    port = free_port()
    env_file = tmp_path / ".env"
    env_file.write_text(f"PORT={port}\nWEB_CONCURRENCY=2\nLOG_FORMAT=text\n")
    process = subprocess.Popen([sys.executable, "-m", "streamchat.server.serve"], cwd=REPO, text=True,
                               env=clean_env(ENV_FILE=str(env_file)), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert eventually(lambda: _healthy(f"http://127.0.0.1:{port}"), timeout=30)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=40)
    warnings = [line for line in output.splitlines() if line.startswith("streamchat: warning:")]
    assert len(warnings) == 1 and "count in memory, separately in each of the 2 workers" in warnings[0]
    assert output.count("Booting worker") == 2


def _healthy(base: str) -> bool:
    try:
        return request(base, "GET", "/healthz", timeout=1)[0] == 200
    except OSError:
        return False


def test_gunicorns_master_never_imports_requests_before_the_workers_patch_for_gevent():
    # The master imports the config file and the worker class; the workers fork from it and only then
    # patch for gevent. urllib3 imported before that keeps ssl.SSLContext unpatched, so every HTTPS
    # upstream read would block the whole worker (the tests' upstreams are plain HTTP: they never see it).
    probe = ("import runpy, sys; from gunicorn.util import load_class; runpy.run_path('gunicorn.conf.py'); "
             "load_class(runpy.run_path('gunicorn.conf.py')['worker_class']); "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'urllib3', 'requests', 'flask', 'app'}))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_no_worker_warns_that_it_patched_ssl_too_late(live):
    assert "MonkeyPatchWarning" not in live.log()
