from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib

from fedkd.runtime.launch import (
    OFFLINE_ENV,
    descendants,
    offline_env,
    run_config_toml,
    stop_process,
    toml_value,
)


def test_offline_env_turns_everything_off(tmp_path) -> None:
    env = offline_env(tmp_path, base={"PATH": "/usr/bin"})
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["FLWR_HOME"] == str(tmp_path)
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert set(OFFLINE_ENV) <= set(env)


def test_run_config_toml_nests_dotted_keys() -> None:
    flat = {"seed": 3, "data.alpha": 0.1, "data.dataset": "digits", "output.dir": "/tmp/a b",
            "federation.evaluate-clients": False}
    nested = tomllib.loads(run_config_toml(flat))
    assert nested == {"seed": 3, "data": {"alpha": 0.1, "dataset": "digits"},
                      "output": {"dir": "/tmp/a b"}, "federation": {"evaluate-clients": False}}


def test_toml_value() -> None:
    assert toml_value(True) == "true" and toml_value(2) == "2" and toml_value(0.5) == "0.5"
    quoted = 'a "q" b'
    assert tomllib.loads("v = " + toml_value(quoted))["v"] == quoted


def test_stop_process_stops_descendants_in_other_sessions() -> None:
    # A parent whose child runs in a session of its own, as flower-superexec does.
    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 20
    while not descendants(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    (child,) = descendants(proc.pid)
    assert os.getpgid(child) != os.getpgid(proc.pid)
    stop_process(proc, grace=5.0)
    assert proc.returncode is not None
    time.sleep(0.2)
    try:
        with open(f"/proc/{child}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        assert state == "Z", f"child {child} still running (state {state})"
    except FileNotFoundError:
        pass  # reaped: gone
