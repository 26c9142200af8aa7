"""`trapline api`: the upload API on Ray Serve, until SIGTERM or Ctrl-C.

Ray Serve runs an HTTP proxy and `api_replicas` replicas of the FastAPI app. The app is built
inside each replica from the settings (Serve's late-bound ingress, `ApiIngress`), so the Kafka producer and
the S3 clients are made where they are used and nothing unpicklable crosses processes.
Replicas ask for no CPU: they wait on I/O, and on a small machine a CPU reservation per replica
would starve the Ray tasks of a pipeline sharing the cluster.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from trapline.services.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "trapline-api"


class ApiIngress:
    """The Serve deployment: builds the app in the replica (Serve's late-bound ingress).

    Ray 2.60 takes a plain function as an app builder but treats any other callable (a
    functools.partial too) as the ASGI app itself, so the settings reach the builder this way.
    """

    def __init__(self, settings: Settings):
        self.settings = settings

    def __serve_build_asgi_app__(self):
        from trapline.services.api.app import build_app

        return build_app(self.settings)


def serve_api(settings: Settings, ready: threading.Event | None = None) -> None:
    """Start Ray (unless connected to a cluster via RAY_ADDRESS) and Serve; block until a signal."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 writes a token file otherwise
    started_ray = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            ray.init(
                num_cpus=max(os.cpu_count() or 1, 1),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                _node_ip_address="127.0.0.1",
            )
        started_ray = True
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        serve.start(http_options={"host": settings.api_host, "port": settings.api_port})
        deployment = serve.deployment(
            name="api",
            num_replicas=settings.api_replicas,
            ray_actor_options={"num_cpus": 0},
        )(serve.ingress()(ApiIngress))
        serve.run(deployment.bind(settings), name=APP_NAME, route_prefix="/", blocking=False)
        log.info("upload API on http://%s:%d (docs at /docs)", settings.api_host, settings.api_port)
        if ready is not None:
            ready.set()
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        serve.shutdown()
        if started_ray:
            ray.shutdown()
