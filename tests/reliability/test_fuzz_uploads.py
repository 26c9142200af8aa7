"""Event parsing under coverage-guided fuzzing (atheris) for a bounded time: no input crashes it.
The hypothesis properties of the same parser are in tests/unit/test_uploads.py (not repeated here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

FUZZER = Path(__file__).resolve().parent / "fuzz_uploads.py"
# libFuzzer's -rss_limit_mb reads the process's *peak* RSS (getrusage ru_maxrss), and Linux carries
# ru_maxrss across execve: a fuzzer spawned straight from this pytest process, which holds GBs by the
# time the reliability tests run, starts "out of memory" (CI, stop 27: rss 1983 MB at input one).
# A shell in between forks the fuzzer as a new process, whose peak starts at zero; the trailing
# `exit` keeps the shell from exec-ing it in place.
FRESH_PEAK_RSS = ["sh", "-c", '"$@"; exit $?', "sh"]


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (the [dev] extra installs it on Linux x86_64)",
)
def test_atheris_finds_no_input_that_breaks_event_parsing(tmp_path, scoreboard):
    fuzzer = [sys.executable, str(FUZZER), "-max_total_time=8", "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/"]
    result = subprocess.run(
        [*FRESH_PEAK_RSS, *fuzzer], capture_output=True, text=True, timeout=120
    )  # fmt: skip
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("oom-*"))
    assert result.returncode == 0 and not crashes, f"{crashes}\n{result.stderr[-3000:]}"
    runs = int(result.stderr.rsplit("Done ", 1)[1].split(" runs", 1)[0])
    assert runs > 1000, "the fuzzer barely ran"
    from support.harness import Score

    scoreboard.record(
        Score(
            "event parsing fuzzed (atheris, 8 s)", runs, runs, 0, 0, f"{runs:,} inputs, 0 crashes"
        )
    )
