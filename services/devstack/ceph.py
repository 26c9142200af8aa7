"""A throwaway one-node Ceph cluster with its S3 gateway (RGW), for tests and the local stack.

The real Ceph S3 server, installed from Debian (`scripts/install_ceph.sh`), started in a temp
dir: a monitor, one OSD that keeps objects in memory (memstore), and radosgw on 127.0.0.1.
Nothing is written to /etc/ceph or /var/lib/ceph; every path (config, data, logs, sockets, pid
files) is inside the instance's own folder, and every instance has its own fsid and ports, so
several can run side by side.

    with start_ceph_rgw() as s3:
        fs = s3fs.S3FileSystem(key=s3.access_key, secret=s3.secret_key,
                               endpoint_url=s3.endpoint_url)

Ready in ~3 s here (Ceph 16.2 "pacific" from Debian 12); objects are gone on stop.

Over 400 lines because starting a real Ceph takes many small steps (keys, monitor, OSD, RGW, a
user) that only make sense in order, and each has its own failure to explain.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from trapline.services.devstack.tansu import ServerStartError, free_port

CEPH_PROGRAMS = ("monmaptool", "ceph-mon", "ceph-osd", "ceph", "radosgw", "radosgw-admin")
INSTALL_HINT = (
    "run scripts/install_ceph.sh (apt-get install --no-install-recommends ceph-mon ceph-osd "
    "radosgw ceph-common)"
)
CLUSTER = "trapline"  # $cluster in the file names below; the config file is passed explicitly
# The S3 region of RGW's default zonegroup (its api_name). Signing accepts any region, but
# s3fs sends the region as CreateBucket's LocationConstraint, which RGW refuses unless it is
# this name ("The specified location-constraint is not valid" for us-east-1).
REGION = "default"
RGW_NAME = "client.rgw.gw"
# Debian installs the daemons in /usr/bin; also look where sbin-only images put them.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/sbin", "/sbin"])
# Unix socket paths must fit in sockaddr_un (108 bytes).
_MAX_SOCKET_DIR = 80


def missing_ceph_programs() -> list[str]:
    """The Ceph programs this module runs that are not installed (empty when all are)."""
    return [name for name in CEPH_PROGRAMS if shutil.which(name, path=_SEARCH_PATH) is None]


@dataclass
class CephRGW:
    """A running cluster and its S3 endpoint; a context manager that stops it on exit."""

    root: Path  # everything of this instance lives below here
    port: int  # radosgw's plain-HTTP port on 127.0.0.1
    mon_port: int
    fsid: str
    tls_port: int | None = None  # HTTPS port when started with tls=True
    ca_file: Path | None = None  # the self-signed certificate that TLS clients must trust
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    region: str = REGION
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    _remove: list[Path] = field(default_factory=list, repr=False)  # folders deleted on stop

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_endpoint_url(self) -> str | None:
        return f"https://127.0.0.1:{self.tls_port}" if self.tls_port else None

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    def env(self) -> dict[str, str]:
        """AWS variables that point an S3 client (s3fs, pyarrow, Tansu) at this gateway."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT": self.endpoint_url,  # Tansu's (object_store crate's) spelling
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            # pyarrow's S3 (AWS SDK for C++) sends checksums in chunked trailers by default,
            # which RGW 16.2 rejects (411 MissingContentLength on UploadPart).
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def alive(self) -> bool:
        return bool(self.processes) and all(p.poll() is None for p in self.processes.values())

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of every daemon's and tool's log, for error messages."""
        logs = sorted((self.root / "log").glob("*")) if (self.root / "log").is_dir() else []
        parts = []
        for path in logs:
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if text:
                parts.append(f"--- {path.name}\n" + "\n".join(text[-lines:]))
        return "\n".join(parts) or "(no logs)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every daemon of this instance (gateway first, monitor last) and remove its files."""
        # One after the other: an OSD stopped after its monitor waits 5 s to say goodbye.
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.processes.clear()
        for folder in self._remove:
            shutil.rmtree(folder, ignore_errors=True)
        self._remove.clear()

    def __enter__(self) -> CephRGW:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_ceph_rgw(
    workdir: Path | None = None,
    port: int | None = None,
    *,
    tls: bool = False,
    timeout_s: float = 90.0,
) -> CephRGW:
    """Start mon + memstore OSD + radosgw on 127.0.0.1 and return once S3 ListBuckets works.

    `workdir=None` uses a new temp dir, removed on stop; otherwise the instance gets a fresh
    subfolder of `workdir` that is kept (its logs stay for inspection). `port=None` picks a
    free port (retrying once on another if it is taken meanwhile). `tls=True` also serves HTTPS
    on another port with a self-signed certificate (`ca_file`; needs the `openssl` program).
    Raises `ServerStartError` naming the missing programs, or with the daemons' log tails.
    """
    missing = missing_ceph_programs()
    if missing:
        raise ServerStartError(
            f"Ceph is not installed (missing {', '.join(missing)}): {INSTALL_HINT}"
        )
    tries = 1 if port is not None else 2
    for attempt in range(tries):
        server = _prepare(workdir, port or free_port(), tls)
        try:
            _bring_up(server, time.monotonic() + timeout_s)
        except ServerStartError:
            port_taken = "Address already in use" in server.log_tail(50)
            server.stop()  # removes only what it created (a given workdir keeps the logs)
            if port_taken and attempt + 1 < tries:
                continue
            raise
        except BaseException:
            server.stop()
            raise
        atexit.register(server.stop)  # an aborted test run must not leave daemons behind
        return server
    raise AssertionError("unreachable")


def _prepare(workdir: Path | None, port: int, tls: bool) -> CephRGW:
    if workdir is None:
        root = Path(tempfile.mkdtemp(prefix="trapline-ceph-"))
        remove = [root]
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="ceph-", dir=workdir))
        remove = []
    run_dir = root / "run"
    if len(str(run_dir)) > _MAX_SOCKET_DIR:  # a deep workdir: sockets go to a short temp dir
        run_dir = Path(tempfile.mkdtemp(prefix="trapline-ceph-run-"))
        remove.append(run_dir)
    for name in ("log", "mon", "osd", "rgw", "crash"):
        (root / name).mkdir()
    run_dir.mkdir(exist_ok=True)
    server = CephRGW(root=root, port=port, mon_port=free_port(), fsid=str(uuid.uuid4()))
    server._remove = remove
    if tls:
        server.tls_port = free_port()
        server.ca_file = _self_signed_certificate(root)
    server.conf.write_text(_config(server, run_dir))
    return server


def _config(server: CephRGW, run_dir: Path) -> str:
    root = server.root
    frontends = f"beast endpoint=127.0.0.1:{server.port}"
    if server.tls_port and server.ca_file:
        frontends += (
            f" ssl_endpoint=127.0.0.1:{server.tls_port} ssl_certificate={server.ca_file}"
            f" ssl_private_key={root / 'tls.key'}"
        )
    return f"""\
[global]
# Its own cluster id: clients and daemons of two instances never mistake one for the other.
fsid = {server.fsid}
# One monitor on a free loopback port, msgr2 only (every Ceph client since Nautilus speaks it),
# so each daemon needs one port, not two.
mon_host = v2:127.0.0.1:{server.mon_port}
ms_bind_msgr1 = false
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
# No cephx: no keyrings to create or protect. The S3 keys are RGW's own and still enforced.
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
# The 'secure' wire mode encrypts with the session key that cephx negotiates; with auth none
# there is none, so offer 'crc' first on every kind of connection (the mon ones default to
# 'secure crc'). Without these six, radosgw never gets past the monitor (`send_auth_request
# ... returned -13` in its log) and S3 never comes up.
ms_cluster_mode = crc secure
ms_service_mode = crc secure
ms_client_mode = crc secure
ms_mon_cluster_mode = crc secure
ms_mon_service_mode = crc secure
ms_mon_client_mode = crc secure
# One OSD holds everything: one copy of each object, and Pacific refuses size-1 pools unless
# explicitly allowed.
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
# RGW creates ~7 pools on first start (more with buckets): 8 placement groups each peer fast,
# and the per-OSD limit leaves room for all of them on the single OSD.
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
mon_max_pg_per_osd = 1000
# Objects live in RAM: no block device, no BlueStore mkfs (slow, GBs); gone on stop.
osd_objectstore = memstore
memstore_device_bytes = 2147483648
# The monitor batches map changes for 1 s by default; RGW's first start issues ~15 pool
# commands one after the other, so a short interval makes start-up seconds faster.
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
# The monitor's store is a few MB: do not refuse to start or warn on a busy CI disk.
mon_data_avail_crit = 1
mon_data_avail_warn = 2
mon_warn_on_pool_no_redundancy = false
# Every file of this instance stays below its own folder (nothing in /etc, /var or /run).
run_dir = {run_dir}
admin_socket = {run_dir}/$name.$pid.asok
pid_file = {run_dir}/$name.pid
log_file = {root}/log/$cluster-$name.log
mon_cluster_log_file = default={root}/log/$cluster.$channel.log cluster={root}/log/$cluster.log
mon_data = {root}/mon/$cluster-$id
osd_data = {root}/osd/$cluster-$id
rgw_data = {root}/rgw/$cluster-$id
crash_dir = {root}/crash
keyring = {root}/keyring
# Two cores here: keep background work and threads down.
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1

[{RGW_NAME}]
# The S3 endpoint, loopback only (path-style addressing: no wildcard DNS needed).
rgw_frontends = {frontends}
rgw_thread_pool_size = 32
# No lifecycle or garbage-collection sweeps in a cluster that lives for one test session.
rgw_enable_lc_threads = false
rgw_enable_gc_threads = false
"""


def _bring_up(server: CephRGW, deadline: float) -> None:
    started = time.monotonic()
    base = ["--cluster", CLUSTER, "--conf", str(server.conf)]
    monmap = server.root / "monmap"
    _run(server, ["monmaptool", "--create", "--fsid", server.fsid, "--addv", "a",
                  f"[v2:127.0.0.1:{server.mon_port}]", str(monmap)], deadline)  # fmt: skip
    _run(server, ["ceph-mon", *base, "-i", "a", "--mkfs", "--monmap", str(monmap)], deadline)
    _daemon(server, "mon.a", ["ceph-mon", *base, "-f", "-i", "a"])

    osd_uuid = str(uuid.uuid4())
    # Registers osd.0 in the OSD map (waits for the monitor to answer).
    _run(server, ["ceph", *base, "osd", "new", osd_uuid], deadline)
    (server.root / "osd" / f"{CLUSTER}-0").mkdir()  # memstore writes its meta files here
    _run(server, ["ceph-osd", *base, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], deadline)
    _daemon(server, "osd.0", ["ceph-osd", *base, "-f", "-i", "0"])

    # Creates RGW's default zone and pools (so before radosgw: no race on the zone) and the
    # user. The keys are generated by RGW and read from stdout: never on a command line.
    created = _run(server, ["radosgw-admin", *base, "user", "create", "--uid", "trapline",
                            "--display-name", "Trapline tests"], deadline)  # fmt: skip
    keys = json.loads(created)["keys"][0]
    server.access_key, server.secret_key = keys["access_key"], keys["secret_key"]
    _daemon(server, RGW_NAME, ["radosgw", *base, "-f", "-n", RGW_NAME])
    _wait_for_s3(server, deadline)
    (server.root / "log" / "startup.txt").write_text(
        f"ready in {time.monotonic() - started:.1f} s\n"
    )


def _run(server: CephRGW, command: list[str], deadline: float) -> str:
    """Run a Ceph tool to completion; its stderr goes to the instance's logs."""
    name = command[0]
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _start_error(server, f"timed out before `{name}`")
    with (server.root / "log" / f"{name}.err").open("ab") as errors:
        try:
            result = subprocess.run(
                [_which(name), *command[1:]],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                timeout=remaining,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _start_error(server, f"`{name} {command[-1]}` did not finish in time") from None
    if result.returncode != 0:
        raise _start_error(server, f"`{' '.join(command)}` exited with {result.returncode}")
    return result.stdout.decode(errors="replace")


def _daemon(server: CephRGW, name: str, command: list[str]) -> None:
    """Start a daemon in the foreground (`-f`: not forked away, so we own and can stop it)."""
    # The kernel's parent-death signal fires when the *thread* that started the child ends, so
    # it is only safe from the main thread; elsewhere stop() and atexit are the clean-up.
    on_main_thread = threading.current_thread() is threading.main_thread()
    with (server.root / "log" / f"{name}.out").open("wb") as output:
        server.processes[name] = subprocess.Popen(
            [_which(command[0]), *command[1:]],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if on_main_thread else None,
        )


def _die_with_parent() -> None:
    """Linux: the daemon gets SIGTERM when its starter dies, even by SIGKILL (no orphans after
    an aborted CI run)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: atexit and stop() still clean up
        pass


def _wait_for_s3(server: CephRGW, deadline: float) -> None:
    """Until a signed ListBuckets with the new user's keys succeeds (proves the gateway's
    frontend, its pools and the user all work), checking that every daemon still runs."""
    import botocore.session  # shipped with s3fs (aiobotocore); only needed once here
    from botocore.config import Config

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
    )
    last = "no answer"
    while time.monotonic() < deadline:
        for name, process in server.processes.items():
            if process.poll() is not None:
                raise _start_error(server, f"{name} exited with status {process.returncode}")
        try:
            client.list_buckets()
            return
        except Exception as error:  # not listening yet, or still initialising: retry
            last = f"{type(error).__name__}: {error}"
        time.sleep(0.1)
    raise _start_error(server, f"S3 ListBuckets on {server.endpoint_url} never succeeded ({last})")


def _self_signed_certificate(root: Path) -> Path:
    openssl = shutil.which("openssl", path=_SEARCH_PATH)
    if openssl is None:
        raise ServerStartError("tls=True needs the openssl program (apt-get install openssl)")
    certificate = root / "tls.crt"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(root / "tls.key"), "-out", str(certificate), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, stdin=subprocess.DEVNULL, capture_output=True,
    )  # fmt: skip
    return certificate


def _which(name: str) -> str:
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        raise ServerStartError(f"{name} not found: {INSTALL_HINT}")
    return path


def _start_error(server: CephRGW, what: str) -> ServerStartError:
    return ServerStartError(
        f"Ceph RGW on {server.endpoint_url} (cluster {server.fsid}, files in {server.root}) "
        f"{what}{_first_errors(server)}; logs:\n{server.log_tail()}"
    )


def _first_errors(server: CephRGW) -> str:
    """The telling lines (a port in use, a failed frontend) that a crash's tail may bury."""
    found: list[str] = []
    for path in sorted((server.root / "log").glob("*")):
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if _TELLING.search(line):
                text = line.split(" -1 ", 1)[-1].strip()
                if text not in found:
                    found.append(text)
    return f" ({'; '.join(found[:3])})" if found else ""


_TELLING = re.compile(r"failed to bind|Address already in use|ERROR: failed|No space left")
