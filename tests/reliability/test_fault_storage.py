"""The S3 server going away while a worker writes its tables there: the real Ceph RGW gateway
is stopped for 20 s mid-run (longer than the S3 client's own retries) and started again (the cluster behind it keeps the objects, as a
restarted gateway in front of a real cluster does)."""

from __future__ import annotations

import subprocess
import time

from support.harness import Supervisor, account, accounted, start_worker, worker_env
from support.stream_workers import make_photos

from trapline.services.devstack.ceph import RGW_NAME
from trapline.services.devstack.tansu import stop_process
from trapline.services.tools.submit import submit_folder

pytest_plugins = ["support.s3_fixtures"]  # one Ceph cluster for the session, shared with tests/integration/test_s3.py
OUTAGE_S = 20.0


def _restart_gateway(rgw) -> None:
    """Start radosgw again with the arguments it had, and wait until it answers."""
    old = rgw.processes[RGW_NAME]
    with (rgw.root / "log" / f"{RGW_NAME}.restarted.out").open("ab") as output:
        rgw.processes[RGW_NAME] = subprocess.Popen(
            old.args, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
        )
    import s3fs

    fs = s3fs.S3FileSystem(
        key=rgw.access_key, secret=rgw.secret_key, endpoint_url=rgw.endpoint_url,
        client_kwargs={"region_name": rgw.region}, skip_instance_cache=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            fs.ls("")
            return
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_s3_gateway_gone_20_s_during_writes_every_photo_exactly_once(
    tansu,
    kafka_topic,
    ceph_rgw,
    s3,
    s3_bucket,
    tmp_path,
    scoreboard,
):
    bucket = s3_bucket("results")
    out = f"s3://{bucket}/out"
    topic = kafka_topic("s3-outage", partitions=2)
    photos = make_photos(tmp_path / "card", 120, deployments=4, seed=51)
    assert submit_folder(str(tmp_path / "card"), tansu.bootstrap, topic).submitted == 120
    log = tmp_path / "worker.log"
    env = worker_env(
        tansu.bootstrap, topic, "g-s3-outage", batch_max_records=10,
        s3_endpoint_url=ceph_rgw.endpoint_url, s3_region=ceph_rgw.region,
        s3_access_key_id=ceph_rgw.access_key, s3_secret_access_key=ceph_rgw.secret_key,
    )  # fmt: skip
    supervisor = Supervisor(lambda: start_worker(env, out, log))
    try:
        supervisor.wait_until(lambda: accounted(out) >= 20, 90, "the first segments", log)
        stop_process(ceph_rgw.processes[RGW_NAME], 5)
        supervisor.sleep(OUTAGE_S)
        _restart_gateway(ceph_rgw)
        s3.invalidate_cache()
        supervisor.wait_until(
            lambda: accounted(out) >= 120, 120, "all photos after S3 came back", log
        )
        time.sleep(1.0)
    finally:
        supervisor.stop()
        if ceph_rgw.processes[RGW_NAME].poll() is not None:
            _restart_gateway(ceph_rgw)  # leave the session's gateway running for other tests
    score = scoreboard.record(
        account(
            "S3 gateway gone 20 s during writes", [str(p) for p in photos], out,
            note=f"worker restarts {supervisor.restarts}",
        )
    )  # fmt: skip
    assert (score.duplicates, score.losses) == (0, 0)
    assert supervisor.restarts == 0, (
        f"the worker exited {supervisor.exit_codes} and had to be restarted:\n{_exit_trace(log)}"
    )


def _exit_trace(log) -> str:
    """The first traceback in the worker log (why it exited), else the log's tail."""
    text = log.read_text(errors="replace")
    at = text.find("Traceback")
    return text[at : at + 4000] if at >= 0 else text[-2000:]
