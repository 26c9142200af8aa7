"""The local Ray that `trapline run` and `trapline serve` start: loopback only, no dashboard.

Why this needs care: a reachable Ray accepts jobs, i.e. runs code for whoever reaches its GCS,
raylet or agents. Ray 2.60 ignores `_node_ip_address="127.0.0.1"` on Linux: `ray.init` turns a
loopback address into the machine's address unless "clusters" are off
(`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read when Ray is imported), and then binds the GCS,
the raylet, every actor and the agents on all interfaces or on that address. With clusters off
every one of them listens on 127.0.0.1 (checked by tests/integration/test_local_ray.py, which lists the
listening sockets of a running `trapline run` and `trapline serve` and their children).

Service mode also forwards the actors' output to this process's standard output, verbatim
(no "(StreamActor pid=...)" prefix, no de-duplication of repeated lines), so that a pod's log
shows every worker's JSON lines.
"""

from __future__ import annotations

import os
import sys

from trapline.services.settings import Settings

# Set before Ray is imported (its constants read them once) and inherited by Ray's processes.
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep 127.0.0.1 as the node address
    "RAY_AUTH_MODE": "disabled",  # Ray 2.60 writes an auth token file otherwise
    "RAY_USAGE_STATS_ENABLED": "0",  # nothing phones home (and no prompt)
}
FORWARD_ENV = {
    "RAY_DISABLE_WORKER_LOG_PREFIX": "1",  # an actor's JSON line stays one JSON line
    "RAY_DEDUP_LOGS": "0",  # two workers saying the same thing are two events
}


def start_local_ray(settings: Settings, forward_logs: bool = False) -> bool:
    """Start a local Ray sized for the workers, unless one runs (RAY_ADDRESS, a cluster).

    Returns True if this call started it (the caller shuts it down). `forward_logs`: the
    actors' stdout and stderr are printed by this process (service mode); a folder run keeps
    them in Ray's log files so that its progress bar stays readable.
    """
    for name, value in {**LOOPBACK_ENV, **(FORWARD_ENV if forward_logs else {})}.items():
        os.environ.setdefault(name, value)
    already_imported = "ray" in sys.modules
    import ray

    if already_imported:  # Ray read these variables at import: tell its modules directly
        from ray._private import ray_constants, ray_logging

        ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1"
        if forward_logs:
            ray_constants.RAY_DISABLE_WORKER_LOG_PREFIX = True
            ray_logging.RAY_DEDUP_LOGS = False
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):  # a cluster (KubeRay): its own network policy applies
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=forward_logs)
        return True
    ray.init(
        # "local": always a Ray of our own. Without it ray.init joins whatever cluster
        # /tmp/ray/ray_current_cluster names (left by any `ray start` on the machine, even a
        # stopped one: then it fails) instead of starting one sized and bound as below.
        address="local",
        num_cpus=settings.workers * settings.threads_per_worker,
        include_dashboard=settings.ray_dashboard,
        dashboard_host="127.0.0.1",
        log_to_driver=forward_logs,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    return True
