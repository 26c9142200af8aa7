"""Every process that touches the tables puts pyarrow on jemalloc (pipelines/delta.py
`use_lean_arrow_pool`) and has delta-rs's own jemalloc return freed pages at once
(`DELTA_RS_MALLOC_CONF`), unless the operator chose otherwise."""

import os
import subprocess
import sys

import pyarrow as pa

PROBE = (
    "import trapline.pipelines.readers, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
)


def _pool_in_a_fresh_process(**env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_reading_the_tables_uses_jemalloc_where_pyarrow_has_it():
    try:
        pa.jemalloc_memory_pool()
        expected = "jemalloc"
    except NotImplementedError:
        expected = "system"
    assert _pool_in_a_fresh_process() == expected


def test_the_operators_choice_wins():
    assert _pool_in_a_fresh_process(ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"
    assert _pool_in_a_fresh_process(ARROW_DEFAULT_MEMORY_POOL="system") == "system"


DELTA_RS_PROBE = (
    "import os, trapline.pipelines.delta as delta; "
    "print(os.environ['_RJEM_MALLOC_CONF'] == delta.DELTA_RS_MALLOC_CONF)"
)


def _delta_rs_process(**env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    return subprocess.run(
        [sys.executable, "-c", DELTA_RS_PROBE],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
    )


def test_delta_rs_gets_the_setting_before_it_loads_and_accepts_it():
    result = _delta_rs_process()
    assert result.stdout.strip() == "True"
    assert "<jemalloc>" not in result.stderr  # an unknown option would be reported here


def test_the_variable_reaches_delta_rs_allocator_and_the_operators_value_wins():
    """stats_print makes delta-rs's jemalloc print its statistics at exit: proof that the
    variable our default goes through is the one that allocator reads."""
    result = _delta_rs_process(_RJEM_MALLOC_CONF="stats_print:true")
    assert result.stdout.strip().startswith("False")  # ours did not replace it
    assert "Begin jemalloc statistics" in result.stdout + result.stderr
