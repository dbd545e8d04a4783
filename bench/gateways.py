"""The gateways users compare us with, side by side on one job: LiteLLM's proxy and Portkey's gateway.

``bench/run --only gateways`` installs each, pinned, into ``bench/.gateways/`` the first time (never
``./run`` nor ``./run-tests``: the comparison is the benchmark's business), points it at the same fake
upstream as the service, and sends the same OpenAI-compatible streaming job to each and to the service's
``/v1/chat/completions``, one after the other: one client (the time each adds to the first token, against
the upstream reached directly in turn), then 200 and 1,000 concurrent streams (time to first token p99,
completed streams, CPU per reply), and each process's peak memory. One process each: the service's one
gevent worker, LiteLLM's one uvicorn worker, Portkey's one Node process.

Set-up, as a user following each project's docs would do it, with what this machine lacks said here:

- LiteLLM 1.110.2's proxy (``litellm --config ... --num_workers 1``), one model entry ``openai/bench``
  with the fake as ``api_base``. Its ``[proxy]`` extra names packages PyPI does not have (the proxy itself
  ships in ``litellm``), so the extra's other packages are installed by name, pinned below. It refuses
  to start without a master key (``LITELLM_MASTER_KEY``, sent as the bearer key), and is told to use its
  bundled model price map (``LITELLM_LOCAL_MODEL_COST_MAP``): this machine reaches no GitHub.
- Portkey's gateway 1.15.2, twice: as its README starts it (``npx @portkey-ai/gateway``, that is
  ``node build/start-server.js --port=N``: its console page and log stream on), and as a production
  deployment runs it (``NODE_ENV=production``, ``--headless``); the upstream named per request with
  ``x-portkey-provider: openai`` and ``x-portkey-custom-host``. "The best gateway" is the better of all.
  ``@hono/node-server`` is pinned to 1.13.5 (Portkey's open issue 1389: newer releases break its streams).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import HOST, ROOT, Process, Proxy, Service, free_port, message, ms, percentile, ratio, wait_tcp
from bench.loadgen import build_request, concurrent_streams

GATEWAYS = ROOT / "bench" / ".gateways"
LITELLM = "1.110.2"
# The [proxy] extra's packages that the proxy imports at start, as pip resolved them on 2026-12-07.
LITELLM_PROXY = ["uvicorn==0.55.0", "uvloop==0.23.0", "fastapi==0.165.0", "starlette==1.10.0", "backoff==2.2.1",
                 "PyYAML==6.0.4", "orjson==3.13.0", "APScheduler==3.11.3", "python-multipart==0.0.34",
                 "cryptography==50.0.2", "PyJWT==2.15.1", "websockets==15.0.1", "fastapi-sso==0.23.0", "rq==2.12.0",
                 "PyNaCl==1.6.2", "semver==3.2.0", "Expression==5.8.0", "mcp==2.3.0", "soundfile==0.14.0"]
PORTKEY = "1.15.2"
HONO_NODE_SERVER = "1.13.5"
MASTER_KEY = "sk-bench-litellm-master-0123456789"
SERVICE_KEY = "bench-service-key-0123456789"


def install_litellm() -> Path:
    """Return LiteLLM's ``litellm`` command, installing it into ``bench/.gateways/litellm`` if it is not there."""
    venv = GATEWAYS / "litellm"
    command = venv / "bin" / "litellm"
    marker = venv / f"installed-{LITELLM}"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"litellm=={LITELLM}", *LITELLM_PROXY], check=True)
        marker.touch()
    return command


def install_portkey() -> Path:
    """Return Portkey's start script, installing the gateway into ``bench/.gateways/portkey`` if it is not there."""
    folder = GATEWAYS / "portkey"
    script = folder / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    marker = folder / f"installed-{PORTKEY}"
    if not marker.exists():
        if not shutil.which("npm"):
            raise RuntimeError("npm is missing: apt-get install nodejs npm")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_text(
            '{"name": "bench-portkey", "private": true, "dependencies": {"@portkey-ai/gateway": "%s", '
            '"@hono/node-server": "%s"}, "overrides": {"@hono/node-server": "%s"}}\n'
            % (PORTKEY, HONO_NODE_SERVER, HONO_NODE_SERVER))
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=folder, check=True)
        marker.touch()
    return script


class LiteLLMProxy(Proxy):
    name = f"LiteLLM {LITELLM}"

    def __init__(self, logs: Path, upstream: str):
        command = install_litellm()
        config = logs / "litellm.yaml"
        config.write_text("model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/bench\n"
                          f"      api_base: {upstream}\n      api_key: sk-bench-upstream\n")
        self.port = free_port()
        env = {**os.environ, "LITELLM_MASTER_KEY": MASTER_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        self.process = Process([str(command), "--config", str(config), "--host", HOST, "--port", str(self.port),
                                "--num_workers", "1"], env, logs / f"litellm-{self.port}.log")
        wait_tcp(self.port, seconds=120)
        self.worker = self.process.popen.pid
        self.headers = {"Authorization": f"Bearer {MASTER_KEY}"}


class PortkeyGateway(Proxy):
    """Portkey as its README starts it (``npx @portkey-ai/gateway``): its console page and log stream on."""

    name = f"Portkey {PORTKEY}"
    options: tuple[str, ...] = ()
    env: dict[str, str] = {}

    def __init__(self, logs: Path, upstream: str):
        script = install_portkey()
        self.port = free_port()
        self.process = Process(["node", str(script), f"--port={self.port}", *self.options],
                               {**os.environ, **self.env}, logs / f"portkey-{self.port}.log", cwd=script.parent)
        wait_tcp(self.port, seconds=60)
        self.worker = self.process.popen.pid
        self.headers = {"Authorization": "Bearer sk-bench-upstream", "x-portkey-provider": "openai",
                        "x-portkey-custom-host": upstream}


class PortkeyHeadless(PortkeyGateway):
    """Portkey as a production deployment runs it: ``NODE_ENV=production`` and ``--headless`` (no console)."""

    name = f"Portkey {PORTKEY}, production, headless"
    options = ("--headless",)
    env = {"NODE_ENV": "production"}


class ServiceAPI(Proxy):
    name = "this service (/v1)"

    def __init__(self, logs: Path, upstream: str):
        # API_RATE_LIMIT off, as the gateways limit nothing (and every stream here comes from one key).
        service = Service(logs, OPENAI_BASE_URL=upstream, SERVICE_API_KEYS=SERVICE_KEY, API_RATE_LIMIT="off")
        self.process, self.port, self.worker = service.process, service.port, service.worker
        self.headers = {"Authorization": f"Bearer {SERVICE_KEY}"}


class Gateways:
    """The ``gateways`` scenario: each contender in turn, on the same job, in one run."""

    CONTENDERS = {"service": ServiceAPI, "litellm": LiteLLMProxy, "portkey": PortkeyGateway,
                  "portkey_headless": PortkeyHeadless}

    def __init__(self, bench):
        self.bench = bench
        self.upstream = f"http://{HOST}:{bench.fake_port}/v1"

    def _job(self, proxy: Proxy, tag: str):
        def make(n):
            name = f"{tag}-{n}"
            body = {"model": "bench", "stream": True, **message({"id": name})}
            return name, build_request(HOST, proxy.port, "/v1/chat/completions", body, headers=proxy.headers)
        return make

    def _load(self, proxy: Proxy, count: int, tag: str) -> tuple[list, float]:
        cpu_before = proxy.cpu()
        results = self.bench.run(concurrent_streams(HOST, proxy.port, self._job(proxy, tag), count, direct=True,
                                                    ramp=1.0, deadline=time.perf_counter() + 90))
        return results, proxy.cpu() - cpu_before

    def gateways(self) -> dict:
        quick = self.bench.quick
        singles, loads = (10, (50, 200)) if quick else (40, (200, 1000))
        figures: dict = {"singles": singles}
        for key, contender in self.CONTENDERS.items():
            try:
                proxy = contender(self.bench.logs, self.upstream)
            except Exception as exc:  # a gateway that cannot be installed or started: said, the others measured
                figures[f"{key}_error"] = str(exc)[:200]
                continue
            figures[f"{key}_name"] = contender.name
            try:
                self._warm_up(proxy, key)
                direct, proxied = [], []
                cpu_before = proxy.cpu()
                for n in range(singles):  # in turn with the upstream reached directly: drift hits both alike
                    direct += self.bench.one_stream(self.bench.fake_port, self.bench.direct(id=f"gw{key}d{n}"),
                                                    direct=True)
                    proxied += self.bench.one_stream(proxy.port, self._job(proxy, f"gw{key}1-{n}"), direct=True)
                cpu = proxy.cpu() - cpu_before
                d50, p50 = percentile([r.ttfb for r in direct], 50), percentile([r.ttfb for r in proxied], 50)
                figures.update({f"{key}_1_completed": sum(r.ok for r in proxied),
                                f"{key}_1_added_ttfb_p50_ms": ms(p50 - d50) if None not in (p50, d50) else None,
                                f"{key}_1_cpu_ms_per_reply": round(1000 * cpu / max(1, singles), 2)})
                for count in loads:
                    results, cpu = self._load(proxy, count, f"gw{key}{count}")
                    completed = sum(r.ok for r in results)
                    figures.update({f"{key}_{count}_completed": completed,
                                    f"{key}_{count}_ttfb_p99_ms": ms(percentile([r.ttfb for r in results], 99)),
                                    f"{key}_{count}_cpu_ms_per_reply": round(1000 * cpu / max(1, completed), 2)})
                figures[f"{key}_peak_rss_mb"] = round(_tree_peak_mb(proxy.worker), 1)
            finally:
                proxy.stop()
        best = [k for k in self.CONTENDERS if k != "service" and f"{k}_name" in figures]
        for count in (1, *loads):
            ours = figures.get(f"service_{count}_cpu_ms_per_reply")
            theirs = [figures[f"{k}_{count}_cpu_ms_per_reply"] for k in best
                      if figures.get(f"{k}_{count}_completed")]
            if ours is not None and theirs:
                figures[f"service_vs_best_cpu_{count}"] = ratio(ours, min(theirs))
        ours = figures.get("service_1_added_ttfb_p50_ms")
        theirs = [figures[f"{k}_1_added_ttfb_p50_ms"] for k in best if figures.get(f"{k}_1_added_ttfb_p50_ms")]
        if ours is not None and theirs:
            figures["service_vs_best_added_ttfb_1"] = ratio(max(ours, 0.01), min(theirs))
        return figures

    def _warm_up(self, proxy: Proxy, key: str) -> None:
        # First requests load lazily imported code and open pooled connections: not what is measured.
        for n in range(3):
            results = self.bench.one_stream(proxy.port, self._job(proxy, f"gw{key}warm{n}"), direct=True)
            if not all(r.ok for r in results):
                raise RuntimeError(f"{proxy.name} did not answer the job: {[r.error or r.status for r in results]}")


def _tree_peak_mb(pid: int) -> float:
    """The peak resident memory of ``pid`` and of its children (a gateway may work in a child process)."""
    from bench.common import peak_rss_mb

    total = peak_rss_mb(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(peak_rss_mb(int(child)) for child in children)
