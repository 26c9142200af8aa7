"""Both modes on a real two-node Ray cluster on one machine: does the work spread over nodes?

    .venv/bin/python -m load_tests --mode cluster --photos 300

A head and a second node, each started by Ray's own CLI (`ray start --block`: stopping the
command stops its node's processes), each with one CPU and a resource naming it, with token
authentication (a random token for this run; `ray start` in Ray 2.60 requires one). Then, with
RAY_ADDRESS pointing at the head, as a KubeRay pod does (docs/operations.md, "Ray cluster"):

- the folder run: `run_folder` with 2 workers; each PipelineActor asks for one CPU, so Ray puts
  one on each node; photos per node from the run's own count (`RunSummary.photos_per_node`);
- the stream: one `trapline serve --workers 2` process, whose two StreamActors land one on
  each node; events per node from each actor's metrics endpoint, its node from its log line.

Per node: photos (events) and photos/s over the run's steady (processed) window.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from load_tests.folder import run_folder_bench
from load_tests.stream import StreamOptions, run_stream_bench
from trapline.services.devstack.tansu import free_port, stop_process
from trapline.services.settings import Settings

RAY = Path(sys.executable).with_name("ray")
NODES = ("head", "second")


@contextlib.contextmanager
def two_node_cluster(cpus_per_node: int = 1) -> Iterator[dict[str, str]]:
    """Start the two nodes; yield {node id: name}; stop both. RAY_ADDRESS and the token are set
    in this process's environment meanwhile (the drivers and `trapline serve` inherit them)."""
    port = free_port()
    logs = Path(tempfile.mkdtemp(prefix="trapline-bench-cluster-"))
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    import ray

    _reread_ray_auth()  # a Ray used earlier in this process read them already
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1")
    common = ["--block", "--num-cpus", str(cpus_per_node), "--disable-usage-stats"]
    commands = {
        "head": [str(RAY), "start", "--head", "--port", str(port), "--include-dashboard",
                 "false", *common, "--resources", '{"bench_node_head": 1}'],
        "second": [str(RAY), "start", "--address", f"127.0.0.1:{port}", *common,
                   "--resources", '{"bench_node_second": 1}'],
    }  # fmt: skip
    processes: list[subprocess.Popen] = []
    try:
        for name in NODES:
            with (logs / f"{name}.log").open("wb") as log:
                processes.append(subprocess.Popen(commands[name], env=env, stdout=log,
                                                  stderr=subprocess.STDOUT))  # fmt: skip
            time.sleep(8 if name == "head" else 0)  # the head's GCS first
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        ray.init(address=os.environ["RAY_ADDRESS"])
        deadline = time.monotonic() + 60
        while True:
            alive = [n for n in ray.nodes() if n["Alive"]]
            names = {
                n["NodeID"]: name
                for n in alive
                for name in NODES
                if n["Resources"].get(f"bench_node_{name}")
            }
            if len(names) == len(NODES):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the second node did not join; logs in {logs}")
            time.sleep(1)
        ray.shutdown()
        yield names
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            stop_process(process, 30)
        # The head's `ray start` left its address for later ray.init() calls on this machine.
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        with contextlib.suppress(OSError):
            if current.read_text().strip().endswith(f":{port}"):
                current.unlink()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reread_ray_auth()  # a later local Ray of this process runs as before


def _reread_ray_auth() -> None:
    """Make this process's Ray read RAY_AUTH_MODE and RAY_AUTH_TOKEN again: it reads them once
    (RayConfig and a token cache). The same two calls as Ray's own tests
    (ray/_private/authentication_test_utils.py, `reset_auth_token_state`); private API of
    Ray 2.60, used by this benchmark only."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def run_cluster_bench(paths: list[Path], warmup: list[Path], batch_size: int, say=print) -> dict:
    """The folder run and the saturated stream on the two-node cluster; work per node."""
    result: dict = {"nodes": list(NODES), "cpus_per_node": 1}
    with two_node_cluster() as names:
        say(f"  cluster up: {len(names)} nodes")
        settings = Settings(workers=2, threads_per_worker=1, batch_size=batch_size, metrics_port=0)
        folder = run_folder_bench(paths, settings, 0.0, 2)
        busy = folder["photos"] / folder["photos_per_second_steady"]
        result["folder"] = {
            "photos_per_second": folder["photos_per_second_steady"],
            "stage_busy_share": folder["stage_busy_share"],
            "per_node": {
                names.get(node, node): {"photos": n, "photos_per_second": round(n / busy, 2)}
                for node, n in folder["photos_per_node"].items()
            },
        }
        say(f"  folder on the cluster: {_describe(result['folder'])}")
        options = StreamOptions(rate=0, workers=1, serve_workers=2, batch_size=batch_size)
        stream = run_stream_bench(paths, warmup, options)
        window = stream["events"] / stream["processed_per_second"]
        per_node: dict[str, dict] = {}
        for worker in stream["per_worker"]:
            name = names.get(worker["ray_node"], str(worker["ray_node"]))
            entry = per_node.setdefault(name, {"photos": 0, "photos_per_second": 0.0})
            entry["photos"] += worker["processed"]
            entry["photos_per_second"] = round(entry["photos"] / window, 2)
        result["stream"] = {
            "photos_per_second": stream["processed_per_second"],
            "stage_busy_share": stream["stage_busy_share"],
            "per_node": per_node,
        }
        say(f"  stream on the cluster: {_describe(result['stream'])}")
    result["work_on_every_node"] = all(
        len([n for n in result[mode]["per_node"].values() if n["photos"] > 0]) == len(NODES)
        for mode in ("folder", "stream")
    )
    return result


def _describe(figures: dict) -> str:
    nodes = ", ".join(
        f"{name} {v['photos']} photos ({v['photos_per_second']}/s)"
        for name, v in sorted(figures["per_node"].items())
    )
    return f"{figures['photos_per_second']:.2f} photos/s; {nodes}"
