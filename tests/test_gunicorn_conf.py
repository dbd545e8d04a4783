"""The gunicorn settings the Procfile runs with."""

import gc
import runpy
from pathlib import Path

import pytest

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
