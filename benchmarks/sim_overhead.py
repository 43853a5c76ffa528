"""What the Flower simulation costs on top of the client work: a pure loop against our simulation.

In ONE invocation, with the same data, seeds and settings:

(a) **the loop**: the client work of each round in this process, one thread, no Flower. For
    ``fedavg`` it is a pure PyTorch loop (:func:`pure_fedavg_client`: load the global weights
    into one model, ``steps`` SGD steps on the client's batches, read the weights back), client
    after client; the FedAvg average between rounds is computed outside the timed region, so
    that every round starts from the same weights as in the simulation. For other algorithms the
    loop calls the algorithm's client half directly (``client.app.answer``, in-process, with each
    client's state kept in a dict), and the server half between rounds, untimed.
(b) **the simulation**: the same rounds through the real Flower simulation engine (our own
    ``flower-superlink --simulation``, ``flwr run``, Ray workers; :mod:`simulations.run`'s path),
    with ``--workers`` concurrent workers of one CPU each.

Measured per round: wall time and the CPU time of the whole process tree this benchmark started
(SuperLink, simulation process, Ray's processes and workers, the ``flwr`` CLI), sampled with
``/proc`` every ``--sample-interval`` seconds; round boundaries are the moments a new row appears in
the run's ``metrics.jsonl``. Printed: (b) / (a) for the first round and for the steady rounds
(median of rounds 2..R), in wall and CPU time; Ray start-up (simulation process started -> all
workers are ``ClientAppActor``); peak memory (sum of PSS over the tree, per worker RSS) and per
client; bytes up / down per client per round next to FedAvg's for the same model; and the bytes
pickled through Ray per round (request and reply contents plus the node context, both ways).
For ``fedavg`` the simulation's final global model is compared with the loop's.

``--profile`` samples the tree with py-spy (``pip install py-spy``; found on PATH or given with
``--py-spy``) during the steady rounds and prints where the CPU time goes, per process kind and,
for workers and the simulation process, per activity.

Clients have exactly ``--samples`` local training samples: the pool left after the public set is
``clients * samples`` Fashion-MNIST train images (``data.public-fraction`` = 1 - that / 60,000),
split IID, with no local test split; one epoch = ceil(samples / batch size) steps. Evaluation is
off in the simulation (``federation.evaluate-every = 0``) because the loop does not evaluate.

Run (about two minutes on 2 CPU cores)::

    .venv/bin/python -m benchmarks.sim_overhead --clients 100 --samples 60 --batch-size 20 \\
        --model cnn --algorithm fedavg --workers 2 --rounds 5

Writes ``benchmarks/results/sim_overhead.json`` (and ``.md``) and prints the table.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import pickle
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/sim_overhead.py` as well as `-m`
    sys.path.insert(0, str(ROOT))

from benchmarks.process_sampler import TreeSampler, process_kind  # noqa: E402
from fedkd.algorithms import ALGORITHMS  # noqa: E402
from fedkd.compose import build_config
from fedkd.config import RunConfig, pyproject_defaults  # noqa: E402
from fedkd.data.datasets import load_dataset  # noqa: E402
from fedkd.data.federated import load_federated  # noqa: E402
from fedkd.experiments.report import table_lines  # noqa: E402
from fedkd.runtime.launch import SimulationSuperLink  # noqa: E402
from fedkd.models import build_model  # noqa: E402
from fedkd.protocol import PHASE_KEY, Payload, content_nbytes, encode  # noqa: E402
from fedkd.results import read_metrics  # noqa: E402
from fedkd.training import batch_indices, seeded_generator  # noqa: E402

#: Targets of the issue, measured in one run.
TARGET_CPU_RATIO = 1.2  # CPU per steady round / the loop's
TARGET_WALL_RATIO = 0.65  # steady wall with the workers / the single-thread loop's
TARGET_FIRST_ROUND = 2.0  # first round <= this x a steady round + Ray start-up


# --------------------------------------------------------------------------------------------
# settings shared by the loop and the simulation


def run_settings(args: argparse.Namespace, train_size: int) -> dict[str, Any]:
    """Run-config overrides for ``--clients`` x ``--samples`` (see the module docstring)."""
    pool = args.clients * args.samples
    if pool > train_size:
        raise SystemExit(f"error: {args.clients} clients x {args.samples} samples exceed the "
                         f"{train_size} train images of {args.dataset}")
    steps = args.steps or args.epochs * math.ceil(args.samples / args.batch_size)
    settings: dict[str, Any] = {
        "algorithm": args.algorithm, "seed": args.seed, "num-server-rounds": args.rounds,
        "data.dataset": args.dataset, "data.partitioner": "iid", "data.seed": args.seed,
        "data.num-partitions": args.clients,
        "data.public-fraction": 1.0 - pool / train_size,
        "data.local-test-fraction": 0.0,
        "train.model": args.model, "train.local-steps": steps,
        "train.batch-size": args.batch_size, "train.learning-rate": args.lr,
        "train.num-threads": 1, "train.device": args.device,
        "federation.fraction-train": 1.0, "federation.min-nodes": args.clients,
        "federation.min-replies": args.clients, "federation.evaluate-every": 0,
        "federation.client-state": args.client_state,
    }
    for pair in args.set:
        key, _, raw = pair.partition("=")
        settings[key.strip()] = json.loads(raw) if raw[:1] in '"[{0123456789-tf' else raw
    return settings


def run_config(settings: dict[str, Any], out_dir: Path, run_name: str) -> RunConfig:
    flat = {**pyproject_defaults(ROOT / "pyproject.toml"), **settings,
            "output.dir": str(out_dir), "output.run-name": run_name}
    return build_config(flat)


# --------------------------------------------------------------------------------------------
# (a) the loop


def pure_fedavg_client(
    model: torch.nn.Module, global_state: dict[str, torch.Tensor], x: torch.Tensor,
    y: torch.Tensor, *, steps: int, batch_size: int, lr: float, momentum: float,
    weight_decay: float, generator: torch.Generator,
) -> dict[str, np.ndarray]:
    """One FedAvg client update in plain PyTorch: global weights in, trained weights out.

    The same batches (:func:`fedkd.training.batch_indices` with the client's seeded generator),
    loss and optimiser as ``fedkd.training.fit_supervised``, so the result is the same update.
    """
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_(global_state[name])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    model.train()
    for idx in batch_indices(len(y), batch_size, steps, generator):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def fedavg_average(states: list[dict[str, np.ndarray]], counts: list[int]) -> dict[str, np.ndarray]:
    """FedAvg's weighted average (fedkd.algorithms.fedavg.weighted_average)."""
    from fedkd.algorithms.fedavg import weighted_average

    return weighted_average(states, [float(c) for c in counts])


def initial_global_state(cfg: RunConfig, input_shape: tuple[int, int, int],
                         num_classes: int) -> dict[str, np.ndarray]:
    """The server's initial FedAvg model (``Algorithm.build_model(seed=cfg.seed)``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.train.model, input_shape, num_classes)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def pure_fedavg_round(cfg: RunConfig, rnd: int, global_state: dict[str, np.ndarray],
                      clients: list[tuple[torch.Tensor, torch.Tensor]],
                      model: torch.nn.Module) -> list[dict[str, np.ndarray]]:
    """Every client's update of round ``rnd`` (partition ids 0..K-1), in order."""
    state = {k: torch.from_numpy(v) for k, v in global_state.items()}
    t = cfg.train
    return [
        pure_fedavg_client(model, state, x, y, steps=t.local_steps, batch_size=t.batch_size,
                           lr=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay,
                           generator=seeded_generator(cfg.seed, rnd, pid))
        for pid, (x, y) in enumerate(clients)
    ]


def run_loop(cfg: RunConfig, rounds: int) -> dict[str, Any]:
    """(a): every round's client work in this process; returns timings and the final state."""
    torch.set_num_threads(1)
    per_round: list[dict[str, float]] = []
    final_state: dict[str, np.ndarray] | None = None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    data = load_federated(cfg.data)  # the cold first round includes loading and splitting
    k = cfg.data.num_partitions
    if cfg.algorithm == "fedavg":
        clients = []
        for pid in range(k):
            train = data.client(pid).train
            clients.append((torch.from_numpy(np.array(train.x)), torch.from_numpy(np.array(train.y))))
        counts = [len(y) for _, y in clients]
        state = initial_global_state(cfg, data.input_shape, data.num_classes)
        model = build_model(cfg.train.model, data.input_shape, data.num_classes)
        for rnd in range(1, rounds + 1):
            if rnd > 1:
                cpu0, wall0 = time.process_time(), time.perf_counter()
            updates = pure_fedavg_round(cfg, rnd, state, clients, model)
            per_round.append({"round": rnd, "cpu-s": time.process_time() - cpu0,
                              "wall-s": time.perf_counter() - wall0})
            state = fedavg_average(updates, counts)  # untimed: the server's step
        final_state = state
        kind = "pure PyTorch loop"
    else:
        kind = "in-process client halves (client.app.answer), no Flower"
        per_round = _inprocess_rounds(cfg, rounds, data, cpu0, wall0)
    return {"kind": kind, "rounds": per_round, "final-state": final_state,
            "peak-rss-bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _inprocess_rounds(cfg: RunConfig, rounds: int, data: Any, cpu0: float,
                      wall0: float) -> list[dict[str, float]]:
    """The loop for algorithms other than FedAvg: the server half between rounds untimed."""
    from client.app import answer, client_context
    from fedkd.algorithms.base import ExchangeResult
    from fedkd.protocol import decode

    server = ALGORITHMS.get(cfg.algorithm)(cfg, data.num_classes, data.input_shape)
    server.setup_server(data)
    k = cfg.data.num_partitions
    states: dict[int, dict[str, np.ndarray]] = {pid: {} for pid in range(k)}
    per_round: list[dict[str, float]] = []
    timing = {"cpu": 0.0, "wall": 0.0}

    def exchange(phase: Any, requests: dict[int, Payload], **_: Any) -> ExchangeResult:
        c0, w0 = time.process_time(), time.perf_counter()
        replies = {}
        for node, payload in requests.items():
            content = encode(Payload(arrays=payload.arrays,
                                     config={**payload.config, PHASE_KEY: phase.name}))
            client = client_context(cfg, node, {"partition-id": node, "num-partitions": k},
                                    states[node])
            replies[node] = decode(answer(content, client))
            states[node] = dict(client.state)
        timing["cpu"] += time.process_time() - c0
        timing["wall"] += time.perf_counter() - w0
        return ExchangeResult(replies=replies)

    load_cpu, load_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    for rnd in range(1, rounds + 1):
        # the cold first round also counts loading and splitting the data
        timing.update(cpu=load_cpu if rnd == 1 else 0.0, wall=load_wall if rnd == 1 else 0.0)
        server.run_round(rnd, list(range(k)), exchange)
        per_round.append({"round": rnd, "cpu-s": timing["cpu"], "wall-s": timing["wall"]})
    return per_round


# --------------------------------------------------------------------------------------------
# (b) the simulation, and what it costs the machine


class PySpy:
    """py-spy over the whole tree (``--subprocesses``), from round 1's end to the last round's."""

    def __init__(self, exe: str, root_pid: int, out: Path, rate: int) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(root_pid), "--subprocesses", "--rate", str(rate),
             "--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")[-2000:]


#: Activity -> substrings of a py-spy frame (``function (file:line)``) that mark it; a sample
#: goes to the activity of its innermost marked frame.
WORKER_ACTIVITIES = [
    ("training: forward, backward, optimiser step", (
        "fit_supervised (", "fit_to_targets (", "ClientPrivacy.fit (", "pure_fedavg_client (")),
    ("building a fresh model (random init)", ("build_model (",)),
    ("loading weights into the model", ("load_numpy_state (", "model_with_state (")),
    ("model -> numpy arrays", ("state_to_numpy (",)),
    ("encode reply (npy bytes)", ("encode (fedkd/protocol.py", "to_array (fedkd/protocol.py",
                                  "from_numpy_ndarray (")),
    ("decode request (npy bytes)", ("decode (fedkd/protocol.py", "from_array (fedkd/protocol.py",
                                    "Array.numpy (")),
    ("data: load, split, client's part", ("load_federated (", "load_dataset (", "client_context (",
                                          "cached_client (", "FederatedData.client (")),
    ("node state: file or Context.state", ("load_state_file (", "save_state_file (")),
    ("client app glue (config, context, reply message)", ("_handle (client/app.py",
                                                          "answer (client/app.py")),
    ("imports", ("_find_and_load (",)),
    ("Flower ClientApp dispatch", ("flwr/clientapp",)),
    ("Ray: task (de)serialisation, scheduling", ("ray/", "cloudpickle", "pickle")),
]
SERVER_ACTIVITIES = [
    ("aggregation (weighted average)", ("weighted_average (",)),
    ("encode requests", ("encode (fedkd/protocol.py", "to_array (fedkd/protocol.py",
                         "from_numpy_ndarray (")),
    ("validate replies (decode, checks)", ("validate_reply (", "_check_array (", "from_array (",
                                           "Array.numpy (")),
    ("audit + metrics files", ("append_audit (", "append_metrics (", "_append_line (")),
    ("checkpoint", ("save_checkpoint (",)),
    ("evaluation", ("evaluate (fedkd/training.py",)),
    ("Flower engine: polling every node for messages", (
        "add_messages_to_queue (", "get_message_ins (", "_check_stored_messages (")),
    ("Flower engine: worker threads, node contexts, replies", (
        "vce_api.py", "run_info_store", "store_message_res (")),
    ("Flower grid: push / pull messages", ("inmemory_grid.py", "send_and_receive (")),
    ("Ray: submit, (de)serialise, fetch", ("ray/", "cloudpickle", "pickle")),
    ("Flower log upload / parent monitor threads", ("_log_uploader (", "app_util")),
]


#: Innermost frames of threads that are waiting, not computing (sleeps, condition waits, Ray's
#: task loop blocked in C++): py-spy does not always see them as idle, so they are set apart.
IDLE_LEAVES = ("Condition.wait (threading.py", "Event.wait (threading.py", "_log_uploader (",
               "monitor (flwr/supercore/app_util", "InMemoryGrid.send_and_receive (",
               "Worker.main_loop (ray/_private/worker.py", "Queue.get (queue.py")
IDLE = "waiting (sleep, condition wait, Ray task loop; not CPU)"


def _classify(frames: list[str], table: list[tuple[str, tuple[str, ...]]]) -> str:
    if frames and frames[-1].startswith(IDLE_LEAVES):
        return IDLE
    if not frames:
        return "Ray core, native (no Python frame: task args and results in and out)"
    for frame in reversed(frames):  # innermost first
        for label, needles in table:
            if any(n in frame for n in needles):
                return label
    return "other"


def summarise_profile(raw: Path) -> dict[str, Any]:
    """py-spy raw output -> samples per process kind, and per activity in workers and server."""
    by_kind: dict[str, int] = collections.Counter()
    worker: dict[str, int] = collections.Counter()
    server: dict[str, int] = collections.Counter()
    worker_top: dict[str, int] = collections.Counter()
    if not raw.exists():
        return {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # --subprocesses nests the process chain first: "process A:...;process B:...;frames"
        n_proc = 0
        while n_proc < len(frames) and frames[n_proc].startswith("process "):
            n_proc += 1
        head = frames[n_proc - 1] if n_proc else ""
        frames = frames[n_proc:]
        kind = process_kind([head.split(":", 1)[-1]], head) if head else "other"
        by_kind[kind] += count
        if kind == "worker":
            label = _classify(frames, WORKER_ACTIVITIES)
            worker[label] += count
            if frames:
                worker_top[frames[-1][:120]] += count
        elif kind == "simulation":
            server[_classify(frames, SERVER_ACTIVITIES)] += count

    def shares(counter: dict[str, int]) -> dict[str, float]:
        busy = {k: v for k, v in counter.items() if k != IDLE}
        total = sum(busy.values()) or 1
        return {k: round(v / total, 4) for k, v in sorted(busy.items(), key=lambda kv: -kv[1])}

    return {"samples-by-process-kind": dict(by_kind), "share-by-process-kind": shares(by_kind),
            "worker-activities": shares(worker), "server-activities": shares(server),
            "waiting-samples-set-apart": {"worker": worker.get(IDLE, 0),
                                          "simulation": server.get(IDLE, 0)},
            "worker-top-frames": dict(collections.Counter(worker_top).most_common(15)),
            "worker-samples": sum(worker.values()), "server-samples": sum(server.values())}


def run_sim(args: argparse.Namespace, settings: dict[str, Any], out_dir: Path,
            run_name: str) -> dict[str, Any]:
    """(b): the same rounds through the Flower simulation engine; timings from the tree."""
    federation: dict[str, Any] = {
        "num-supernodes": args.clients, "client-resources-num-cpus": 1,
        "client-resources-num-gpus": 0.0, "init-args-num-cpus": args.workers,
        "init-args-logging-level": "ERROR", "init-args-log-to-driver": False,
    }
    if args.device != "cpu":
        federation["client-resources-num-gpus"] = round(1.0 / args.workers, 6)
        federation["init-args-num-gpus"] = 1
    run_dir = out_dir / run_name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    sampler = TreeSampler(run_dir / "metrics.jsonl", args.sample_interval, args.pss_interval)
    sampler.expected_workers = args.workers
    lines: list[str] = []
    spy: PySpy | None = None
    spy_log = ""
    profile_path = Path(tempfile.gettempdir()) / f"{args.name}-pyspy.txt"
    with SimulationSuperLink(log_path=out_dir / f"{run_name}-superlink.log") as link:
        sampler.start()
        t_submit = time.perf_counter()
        cpu_submit = sampler.total_cpu()
        kind_submit = sampler.cpu_by_kind()

        def on_line(line: str) -> None:
            nonlocal spy
            lines.append(line)
            if "[fedkd]" in line and "round" in line:
                print("  sim:", line.split("[fedkd]", 1)[1].strip()[:110], flush=True)
            if (args.profile and spy is None and "[fedkd] round 1/" in line
                    and args.py_spy and link.proc is not None):
                spy = PySpy(args.py_spy, link.proc.pid, profile_path, args.profile_rate)

        try:
            run_id, status = link.run_streaming(ROOT, settings | {
                "output.dir": str(out_dir), "output.run-name": run_name}, federation, on_line,
                timeout=args.timeout)
        finally:
            if spy is not None:
                spy_log = spy.stop()
            sampler.stop_event.set()
            sampler.join()
        t_end = time.perf_counter()
        cpu_by_kind = sampler.cpu_by_kind()
    if status != "finished:completed":
        tail = "\n".join(lines[-40:])
        raise SystemExit(f"error: simulation ended with status {status}\n{tail}")
    rows = read_metrics(run_dir)
    b = sampler.boundaries
    if len(b) != len(rows):
        print(f"warning: saw {len(b)} round boundaries for {len(rows)} rows", file=sys.stderr)
    per_round = []
    prev_t, prev_cpu, prev_kind = t_submit, cpu_submit, kind_submit
    for row, mark in zip(rows, b):
        kinds = mark["cpu-by-kind"]
        per_round.append({"round": row["round"], "wall-s": mark["time"] - prev_t,
                          "server-wall-s": row["wall-time-s"], "cpu-s": mark["cpu"] - prev_cpu,
                          "cpu-s-by-kind": {k: round(v - prev_kind.get(k, 0.0), 3)
                                            for k, v in kinds.items()},
                          "bytes-up-per-client": row["bytes-up-per-client"],
                          "bytes-down-per-client": row["bytes-down-per-client"],
                          "bytes-up": row["bytes-up"], "bytes-down": row["bytes-down"]})
        prev_t, prev_cpu, prev_kind = mark["time"], mark["cpu"], kinds
    sim_start = sampler.first_seen.get("simulation")
    ray_startup = (sampler.workers_ready_at - sim_start
                   if sampler.workers_ready_at is not None and sim_start is not None else None)
    workers_rss, sim_rss = sampler.peak_rss_of("worker"), sampler.peak_rss_of("simulation")
    out = {
        "run-id": run_id, "run-dir": str(run_dir), "rounds": per_round,
        "total-wall-s": t_end - t_submit,
        "submit-to-simulation-start-s": (sim_start - t_submit) if sim_start else None,
        "ray-startup-s": ray_startup,
        "cpu-s-by-process-kind": cpu_by_kind,
        "peak-tree-rss-bytes": sampler.peak_tree_rss,
        "peak-tree-pss-bytes": sampler.peak_tree_pss,
        "peak-worker-rss-bytes": max(workers_rss) if workers_rss else None,
        "peak-simulation-process-rss-bytes": max(sim_rss) if sim_rss else None,
        "workers-seen": len(workers_rss),
    }
    if args.profile:
        out["profile"] = summarise_profile(profile_path)
        out["profile"]["raw-file"] = str(profile_path)
        if not out["profile"].get("worker-samples"):
            out["profile"]["py-spy-log"] = spy_log
    return out


# --------------------------------------------------------------------------------------------
# bytes


def payload_bytes(cfg: RunConfig, input_shape: tuple[int, int, int], num_classes: int) -> dict[str, int]:
    """FedAvg's bytes per client per round for ``cfg``'s model, from real encoded payloads."""
    state = initial_global_state(cfg, input_shape, num_classes)
    down = encode(Payload(arrays=state, config={"round": 1, PHASE_KEY: "fit"}))
    up = encode(Payload(arrays=state, metrics={"num-examples": 60, "loss": 0.0, "accuracy": 0.0}))
    return {"fedavg-bytes-down-per-client": content_nbytes(down),
            "fedavg-bytes-up-per-client": content_nbytes(up),
            "fedavg-pickled-request-bytes": len(pickle.dumps(down, protocol=5)),
            "fedavg-pickled-reply-bytes": len(pickle.dumps(up, protocol=5))}


def context_bytes(cfg: RunConfig, algorithm_state: dict[str, np.ndarray]) -> int:
    """Bytes of a node ``Context`` pickled (what Ray ships with every message, both ways)."""
    from flwr.app import Array, ArrayRecord, Context, RecordDict

    state = RecordDict()
    if algorithm_state:
        state["fedkd-state"] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                            for k, v in algorithm_state.items()})
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 1},
                  state=state, run_config=cfg.to_flat())
    return len(pickle.dumps(ctx, protocol=5))


# --------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(args: argparse.Namespace, loop: dict[str, Any], sim: dict[str, Any],
              bytes_info: dict[str, Any]) -> dict[str, Any]:
    lr, sr = loop["rounds"], sim["rounds"]
    loop_first, sim_first = lr[0], sr[0]
    loop_steady = {k: _median([r[k] for r in lr[1:]]) for k in ("cpu-s", "wall-s")}
    sim_steady = {k: _median([r[k] for r in sr[1:]]) for k in ("cpu-s", "wall-s", "server-wall-s")}
    ratios = {
        "first-round-wall": sim_first["wall-s"] / loop_first["wall-s"],
        "first-round-cpu": sim_first["cpu-s"] / loop_first["cpu-s"],
    }
    if loop_steady["cpu-s"] and sim_steady["cpu-s"] is not None:
        ratios["steady-cpu"] = sim_steady["cpu-s"] / loop_steady["cpu-s"]
        ratios["steady-wall"] = sim_steady["wall-s"] / loop_steady["wall-s"]
        ratios["steady-server-wall"] = sim_steady["server-wall-s"] / loop_steady["wall-s"]
        ratios["per-round-cpu"] = [round(s["cpu-s"] / l_["cpu-s"], 3) for s, l_ in zip(sr, lr)]
        ratios["per-round-wall"] = [round(s["wall-s"] / l_["wall-s"], 3) for s, l_ in zip(sr, lr)]
    ray = sim["ray-startup-s"]
    first_bound = (TARGET_FIRST_ROUND * sim_steady["server-wall-s"] + ray
                   if ray is not None and sim_steady["server-wall-s"] is not None else None)
    payload_per_round = sum(r["bytes-up"] + r["bytes-down"] for r in sr[1:]) / max(len(sr) - 1, 1)
    targets = {
        "steady-cpu <= 1.2x loop": ratios.get("steady-cpu", math.inf) <= TARGET_CPU_RATIO,
        f"steady-wall ({args.workers} workers) <= 0.65x loop":
            ratios.get("steady-wall", math.inf) <= TARGET_WALL_RATIO,
        "first round <= 2x steady + Ray start-up":
            first_bound is not None and sim_first["server-wall-s"] <= first_bound,
    }
    return {
        "loop": {"kind": loop["kind"], "first-round": loop_first, "steady": loop_steady,
                 "rounds": lr, "peak-rss-bytes": loop["peak-rss-bytes"]},
        "simulation": {**{k: v for k, v in sim.items() if k != "rounds"},
                       "first-round": sim_first, "steady": sim_steady, "rounds": sr},
        "ratios": ratios,
        "first-round-bound-s": first_bound,
        "payload-bytes-per-steady-round": payload_per_round,
        "memory-per-client-bytes": {
            "simulation-tree-peak-pss / clients": sim["peak-tree-pss-bytes"] / args.clients,
            "loop-process-peak-rss / clients": loop["peak-rss-bytes"] / args.clients,
        },
        "bytes": bytes_info,
        "targets-met": targets,
    }


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.1f} MB"


def report(args: argparse.Namespace, s: dict[str, Any], command: str) -> str:
    lo, si, ra = s["loop"], s["simulation"], s["ratios"]
    b = s["bytes"]
    rows = [
        ["first round wall s", f"{lo['first-round']['wall-s']:.2f}",
         f"{si['first-round']['wall-s']:.2f} (server {si['first-round']['server-wall-s']:.2f})",
         f"{ra['first-round-wall']:.2f}x"],
        ["first round CPU s", f"{lo['first-round']['cpu-s']:.2f}", f"{si['first-round']['cpu-s']:.2f}",
         f"{ra['first-round-cpu']:.2f}x"],
    ]
    if "steady-cpu" in ra:
        rows += [
            ["steady round wall s (median)", f"{lo['steady']['wall-s']:.2f}",
             f"{si['steady']['wall-s']:.2f} (server {si['steady']['server-wall-s']:.2f})",
             f"{ra['steady-wall']:.2f}x"],
            ["steady round CPU s (median)", f"{lo['steady']['cpu-s']:.2f}",
             f"{si['steady']['cpu-s']:.2f}", f"{ra['steady-cpu']:.2f}x"],
            ["per-round CPU ratio", "", "", ra["per-round-cpu"]],
            ["per-round wall ratio", "", "", ra["per-round-wall"]],
        ]
    lines = [
        f"Simulation overhead: {args.algorithm}, model {args.model}, {args.clients} clients x "
        f"{args.samples} samples, {s['steps']} local steps of batch {args.batch_size}, "
        f"{args.rounds} rounds, {args.workers} workers, device {args.device}; loop = "
        f"{lo['kind']} (1 thread). Machine: {os.cpu_count()} CPUs, shared; timings measured in "
        f"one invocation.",
        "", f"Command: `{command}`", "",
        *table_lines(["", "loop (a)", "simulation (b)", "(b) / (a)"], rows),
        "",
        f"Ray start-up (simulation process -> {args.workers} workers up): "
        + (f"{si['ray-startup-s']:.1f} s" if si["ray-startup-s"] is not None else "not seen")
        + (f"; first-round bound 2 x steady + Ray start-up = {s['first-round-bound-s']:.1f} s"
           if s["first-round-bound-s"] is not None else ""),
        "Steady-round CPU s by process kind (median): " + ", ".join(
            f"{k} {v:.2f}" for k, v in s["steady-cpu-by-kind"].items()),
        f"CPU s by process kind (whole run): "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(si["cpu-s-by-process-kind"].items(),
                                                          key=lambda kv: -kv[1])),
        f"Memory: tree peak PSS {_mb(si['peak-tree-pss-bytes'])} (RSS {_mb(si['peak-tree-rss-bytes'])}), "
        f"worker peak RSS {_mb(si['peak-worker-rss-bytes'])}, simulation process peak RSS "
        f"{_mb(si['peak-simulation-process-rss-bytes'])}; per client: "
        f"{_mb(s['memory-per-client-bytes']['simulation-tree-peak-pss / clients'])} "
        f"(loop process {_mb(s['memory-per-client-bytes']['loop-process-peak-rss / clients'])})",
        f"Bytes per client per round: up {s['bytes-up-per-client']:,.0f} "
        f"/ down {s['bytes-down-per-client']:,.0f} ({args.algorithm}); FedAvg, same model: up "
        f"{b['fedavg-bytes-up-per-client']:,} / down {b['fedavg-bytes-down-per-client']:,}",
        f"Bytes per round: payloads {s['payload-bytes-per-steady-round'] / 1e6:,.1f} MB; pickled "
        f"through Ray (contents + node contexts, both ways) about "
        f"{b['ray-bytes-per-round-estimate'] / 1e6:,.1f} MB",
        "",
        "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}"
                                for k, v in s["targets-met"].items()),
    ]
    if "final-model-max-abs-diff" in s:
        lines.append(f"Final global model, simulation vs loop: max |diff| = "
                     f"{s['final-model-max-abs-diff']:.3g}")
    prof = si.get("profile")
    if prof:
        lines += ["", "Profile (py-spy, steady rounds): share of CPU samples by process kind: "
                  + ", ".join(f"{k} {v:.0%}" for k, v in prof["share-by-process-kind"].items()),
                  "  worker: " + ", ".join(f"{k} {v:.0%}" for k, v in prof["worker-activities"].items()),
                  "  simulation process: " + ", ".join(f"{k} {v:.0%}"
                                                      for k, v in prof["server-activities"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100, help="clients per round (all sampled)")
    parser.add_argument("--samples", type=int, default=60, help="local training samples per client")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--steps", type=int, default=0, help="local steps (default: one epoch's)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--algorithm", default="fedavg")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--workers", type=int, default=2, help="concurrent Ray workers")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU shared)")
    parser.add_argument("--client-state", default="node", choices=("node", "disk"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="extra run-config override")
    parser.add_argument("--sample-interval", type=float, default=0.1)
    parser.add_argument("--pss-interval", type=float, default=2.0)
    parser.add_argument("--profile", action="store_true", help="py-spy the steady rounds")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable")
    parser.add_argument("--profile-rate", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="sim_overhead", help="result file stem")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: torch sees no CUDA device here", file=sys.stderr)
        return 2
    if args.profile and not args.py_spy:
        print("error: --profile needs py-spy (pip install py-spy, or --py-spy PATH)", file=sys.stderr)
        return 2

    source = load_dataset(args.dataset)
    settings = run_settings(args, len(source.train))
    work = Path(tempfile.mkdtemp(prefix="fedkd-sim-overhead-"))
    cfg = run_config(settings, work, "loop")
    print(f"[a] loop: {args.clients} clients, {cfg.train.local_steps} steps of batch "
          f"{args.batch_size}, model {args.model}, {args.rounds} rounds", flush=True)
    loop = run_loop(cfg, args.rounds)
    for r in loop["rounds"]:
        print(f"  loop round {r['round']}: wall {r['wall-s']:.2f} s, cpu {r['cpu-s']:.2f} s", flush=True)

    data = load_federated(cfg.data)
    sizes = [len(data.client(p).train) for p in range(args.clients)]
    print(f"[b] simulation: {args.workers} workers", flush=True)
    try:
        sim = run_sim(args, settings, work, "sim")
    finally:
        pass
    bytes_info = payload_bytes(cfg, data.input_shape, data.num_classes)
    # What Ray carries per message: the request and reply contents pickled, and the node
    # context both ways (its state holds the algorithm's persistent arrays, if kept there).
    state_example: dict[str, np.ndarray] = {}
    if args.algorithm != "fedavg" and args.client_state == "node":
        state_example = _example_state(cfg, data)
    ctx = context_bytes(cfg, state_example)
    rows = sim["rounds"]
    steady = rows[1:] or rows
    up = statistics.mean(r["bytes-up-per-client"] for r in steady)
    down = statistics.mean(r["bytes-down-per-client"] for r in steady)
    bytes_info["context-pickled-bytes"] = ctx
    bytes_info["ray-bytes-per-round-estimate"] = args.clients * (up + down + 2 * ctx)
    summary = summarise(args, loop, sim, bytes_info)
    kinds = sorted({k for r in rows[1:] for k in r["cpu-s-by-kind"]})
    summary["steady-cpu-by-kind"] = dict(sorted(
        ((k, statistics.median(r["cpu-s-by-kind"].get(k, 0.0) for r in rows[1:])) for k in kinds),
        key=lambda kv: -kv[1])) if rows[1:] else {}
    summary["steps"] = cfg.train.local_steps
    summary["bytes-up-per-client"], summary["bytes-down-per-client"] = up, down
    summary["local-train-samples"] = {"min": min(sizes), "max": max(sizes)}
    if loop["final-state"] is not None:
        ckpt = torch.load(Path(sim["run-dir"]) / "checkpoint.pt", weights_only=False)
        sim_state = ckpt["algorithm"]["_model"]
        summary["final-model-max-abs-diff"] = max(
            float(np.max(np.abs(sim_state[k].numpy() - v))) for k, v in loop["final-state"].items())
    command = ".venv/bin/python -m benchmarks.sim_overhead " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = report(args, summary, command)
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(text + "\n")
    (out / f"{args.name}.json").write_text(json.dumps({
        "command": command, "args": vars(args), "settings": settings,
        "torch": torch.__version__, "platform": platform.platform(), "cpu-count": os.cpu_count(),
        "load-average-at-end": os.getloadavg(), **summary,
    }, indent=2, default=float))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _example_state(cfg: RunConfig, data: Any) -> dict[str, np.ndarray]:
    """One client's persistent state after a round (its personal model), for the byte count."""
    from client.app import answer, client_context

    algorithm = ALGORITHMS.get(cfg.algorithm)(cfg, data.num_classes, data.input_shape)
    client = client_context(cfg, 0, {"partition-id": 0, "num-partitions": cfg.data.num_partitions}, {})
    algorithm.save_personal_model(client, algorithm.personal_model(client))
    del answer
    return dict(client.state)


if __name__ == "__main__":
    sys.exit(main())
