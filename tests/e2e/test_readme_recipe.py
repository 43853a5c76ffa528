"""The deployment recipe of docs/deployment.md, run as written (marked ``e2e``).

The four ``bash`` blocks of its section "The recipe: a TLS SuperLink and authenticated
SuperNodes" run in order in a scratch directory: the exports, the credentials, the SuperLink
(in the background, as "terminal 1"), then the connection, the registrations, two SuperNodes
(with ``state-dir`` and ``warm-dir``) and ``flwr run``. Only what a scratch directory forces is
changed: free ports for 9092/9094/9095, and the repository's path for ``.`` (the app) and
``.venv``. Every process the recipe starts is stopped by PID.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from client.warm import stop_workers
from fedkd.runtime.launch import descendants, free_port, stop_process
from fedkd.results import read_metrics

REPO = Path(__file__).resolve().parents[2]
RECIPE_DOC = REPO / "docs" / "deployment.md"
SECTION = "## The recipe: a TLS SuperLink and authenticated SuperNodes"
pytestmark = pytest.mark.e2e


def recipe_blocks(text: str | None = None) -> list[str]:
    """The ``bash`` blocks of the recipe's section (of ``text``, else of :data:`RECIPE_DOC`)."""
    if text is None:
        text = RECIPE_DOC.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    return [textwrap.dedent(b) for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def adapt(block: str, ports: dict[str, int]) -> str:
    for old, new in ports.items():
        block = block.replace(old, str(new))
    block = block.replace("$PWD/.venv/bin", f"{REPO}/.venv/bin")
    block = block.replace("flwr run . tls", f"flwr run {REPO} tls")
    # a line that starts a process in the background records its PID, to stop it afterwards
    return re.sub(r" &\n", " &\necho $! >> pids.txt\n", block)


def test_the_deployment_recipe_runs_as_written(tmp_path: Path) -> None:
    blocks = recipe_blocks()
    assert len(blocks) == 4, "the recipe has four bash blocks: exports, credentials, SuperLink, run"
    ports = {"9092": free_port(), "9094": free_port(), "9095": free_port()}
    exports, credentials, superlink, run = (adapt(b, ports) for b in blocks)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "RAY_"))}
    env["PYTHONPATH"] = str(REPO)  # `python -m fedkd.runtime.deploy` from the scratch directory

    def bash(script: str, name: str, timeout: float) -> tuple[int, str]:
        # Output to a file, not a pipe: the SuperNodes the script leaves running keep its
        # output open, and a pipe would never reach its end.
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", exports + script],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout)
        return proc.returncode, log_path.read_text(errors="replace")

    rc, output = bash(credentials, "credentials", 120)
    assert rc == 0, output
    with (tmp_path / "superlink.log").open("wb") as log:
        link = subprocess.Popen(["bash", "-c", exports + "exec " + superlink], cwd=tmp_path,
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.crt"))
        deadline = time.monotonic() + 60
        while True:
            assert link.poll() is None, (tmp_path / "superlink.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{ports['9092']}/health",
                                            timeout=2, context=context) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the recipe's SuperLink did not come up"
            time.sleep(0.5)
        rc, output = bash(run, "run", 900)
        assert rc == 0, output[-5000:]
        assert "[fedkd] done" in output, output[-5000:]
    finally:
        pid_file = tmp_path / "pids.txt"
        for pid in (int(p) for p in pid_file.read_text().split()) if pid_file.exists() else ():
            for child in [pid, *descendants(pid)]:  # each SuperNode with what it started
                try:
                    os.kill(child, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        stop_workers(tmp_path / ".warm")
        stop_process(link)
    rows = read_metrics(tmp_path / "outputs" / "fd-demo")
    assert [r["round"] for r in rows] == [1, 2] and rows[-1]["num-failures"] == 0
    # the devices kept their state on disk, and their messages went through warm workers
    assert (tmp_path / "devices" / "node0" / "runs" / "fd-demo").is_dir()
    assert list((tmp_path / ".warm" / "node0").glob("*/worker.log"))
