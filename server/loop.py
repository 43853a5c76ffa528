"""The one round loop every algorithm runs through.

Per round: wait for enough online nodes, sample, let the algorithm run its phases through a
:class:`RoundExchange` (which sends, waits with a timeout, validates and counts), evaluate the
server model on the global test set and every online client on its local test split, append a
row to ``metrics.jsonl``.

The loop, the algorithms and the metrics know clients by their **client id**, never by Flower's
node id: a simulated client's id is its partition id, a device's its node config ``partition-id``
or ``client-id`` (else, and only then, its Flower node id). Flower draws node ids at random for
every SuperLink, so sampling by node id would train other partitions in every run of one seed.
:class:`ClientDirectory` asks each node once which client it is (the ``identify`` phase) and
:class:`FlowerExchange` routes each client's messages to its node.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedkd.runtime import trace
from fedkd.algorithms import Algorithm, ExchangeResult, QuorumError
from fedkd.algorithms.base import EVALUATE_PHASE
from fedkd.config import RunConfig
from fedkd.data.federated import FederatedData
from fedkd.privacy.dpsgd import BUDGET_EXHAUSTED
from fedkd.protocol import (
    CLIENT_ID_KEY,
    EXCHANGE_ROUND_KEY,
    IDENTIFY_PHASE_NAME,
    EXCHANGE_STEP_KEY,
    LOGICAL_CLIENT_KEY,
    PHASE_KEY,
    InvalidReply,
    Payload,
    PhaseSpec,
    content_nbytes,
    encode,
    validate_reply,
)
from fedkd.results import RunOutput
from fedkd.training import evaluate


class NotEnoughNodes(RuntimeError):
    """Fewer than ``federation.min-nodes`` nodes came online in time."""


@dataclass
class Traffic:
    """Bytes sent to and received from each node during one round (all phases)."""

    down: Counter[int] = field(default_factory=Counter)
    up: Counter[int] = field(default_factory=Counter)


#: Why a node's reply was not used (rejected by the contract check, an error raised by the
#: client, no reply within the timeout) -> the round metric that counts it.
FAILURE_METRICS = {"rejected": "rejected-replies", "client-error": "client-errors",
                   "timeout": "timeouts", BUDGET_EXHAUSTED: BUDGET_EXHAUSTED}


@dataclass(frozen=True)
class Failure:
    kind: str
    reason: str


def describe_arrays(content: RecordDict) -> dict[str, dict[str, Any]]:
    """Name -> declared shape, dtype and bytes of every array in a reply (nothing is decoded)."""
    out: dict[str, dict[str, Any]] = {}
    for rec_name, rec in content.items():
        if isinstance(rec, ArrayRecord):
            for name, arr in rec.items():
                out[f"{rec_name}/{name}"] = {
                    "shape": list(arr.shape), "dtype": arr.dtype, "bytes": len(arr.data),
                }
    return out


class RoundExchange(ABC):
    """One round's message exchanges: send one request per node, validate, count, log.

    Subclasses only move messages (:meth:`_send`): :class:`FlowerExchange` through Flower's
    ``Grid``; tests use an in-process one. Everything else, the contract check, the failure
    accounting, the audit records, the traffic counts and the quorum, is shared.

    Failures (client errors, timeouts, rejected replies) are logged with the node and the reason,
    recorded in :attr:`failures`, and skipped. Fewer than ``min_replies`` valid replies raise
    :class:`QuorumError`. ``audit`` (if given) receives one record per reply.
    """

    def __init__(
        self, rnd: int, timeout: float, min_replies: int, traffic: Traffic,
        audit: Callable[[dict[str, Any]], None] | None = None,
        max_num_examples: int | None = None,
    ) -> None:
        self.rnd = rnd
        self.max_num_examples = max_num_examples
        self.timeout = timeout
        self.min_replies = min_replies
        self.traffic = traffic
        self.audit = audit
        self.failures: dict[str, dict[int, Failure]] = {}
        self.steps = 0  # exchanges made in this round so far

    @abstractmethod
    def _send(self, phase: PhaseSpec, requests: dict[int, RecordDict]) -> dict[int, RecordDict | Failure]:
        """Deliver each request; return each node's reply content, or a failure (no entry: no reply)."""

    def __call__(
        self, phase: PhaseSpec, requests: Mapping[int, Payload], *, min_replies: int | None = None
    ) -> ExchangeResult:
        contents = {}
        shared: dict[int, ArrayRecord] = {}  # one encoding of arrays sent to many nodes
        self.steps += 1
        place = {EXCHANGE_ROUND_KEY: self.rnd, EXCHANGE_STEP_KEY: self.steps}
        for node, payload in requests.items():
            contents[node] = encode(Payload(
                arrays=payload.arrays,
                config={**payload.config, PHASE_KEY: phase.name, **place,
                        **self.addressing(node)},
                metrics=payload.metrics,
            ), arrays_cache=shared)
            self.traffic.down[node] += content_nbytes(contents[node])
        answers = self._send(phase, contents)

        valid: dict[int, Payload] = {}
        failures: dict[int, Failure] = {}
        for node in requests:
            answer = answers.get(node)
            if answer is None:
                failures[node] = Failure("timeout", f"no reply within {self.timeout:g} s")
                self._audit(phase, node, "timeout", failures[node].reason, None)
            elif isinstance(answer, Failure):
                if answer.kind == "client-error" and BUDGET_EXHAUSTED in answer.reason:
                    answer = Failure(BUDGET_EXHAUSTED, answer.reason)  # it chose not to train
                failures[node] = answer
                self._audit(phase, node, answer.kind, answer.reason, None)
            else:
                self.traffic.up[node] += content_nbytes(answer)
                try:
                    valid[node] = validate_reply(answer, phase,
                                                 max_num_examples=self.max_num_examples)
                    self._audit(phase, node, "accepted", "", answer)
                except InvalidReply as err:
                    failures[node] = Failure("rejected", str(err))
                    self._audit(phase, node, "rejected", str(err), answer)
        for node, failure in failures.items():
            log(WARNING, "round %d, phase %s: node %d skipped (%s): %s", self.rnd, phase.name, node,
                failure.kind, failure.reason[:500])
        self.failures.setdefault(phase.name, {}).update(failures)

        needed = self.min_replies if min_replies is None else min_replies
        if len(valid) < needed:
            raise QuorumError(
                f"round {self.rnd}, phase {phase.name!r}: only {len(valid)} valid replies of "
                f"{len(requests)} (federation.min-replies = {needed}); failures: "
                + ("; ".join(f"node {n} {f.kind}: {f.reason[:200]}" for n, f in failures.items())
                   or "none")
            )
        return ExchangeResult(replies=valid, failures={n: f.reason for n, f in failures.items()})

    def _audit(self, phase: PhaseSpec, node: int, status: str, reason: str,
               content: RecordDict | None) -> None:
        if self.audit is None:
            return
        self.audit({
            "round": self.rnd, "phase": phase.name, "node": node, **self.node_details(node),
            "status": status, "reason": reason[:500],
            "arrays": describe_arrays(content) if content is not None else {},
            "bytes": content_nbytes(content) if content is not None else 0,
        })

    def node_details(self, node: int) -> dict[str, Any]:
        """Extra audit fields naming where ``node`` (a client id) was reached."""
        return {}

    def addressing(self, node: int) -> dict[str, int]:
        """Config entries that tell the receiving node which client a request is for (logical
        clients, :class:`LogicalRoute`); none when each node is one client."""
        return {}

    def reject(self, phase: str, node: int, reason: str) -> None:
        """Count ``node``'s reply of the phase named ``phase`` as rejected for a reason found after
        the exchange, which the contract check could not see in that reply alone (secure
        aggregation: a public key another node sent too, too few live neighbours, an unmask reply
        for other nodes than asked). Logged, audited (status ``rejected``, no arrays) and counted
        in ``rejected-replies`` like a contract rejection; the caller no longer uses the reply."""
        self.failures.setdefault(phase, {})[node] = Failure("rejected", reason)
        self._audit(PhaseSpec(name=phase), node, "rejected", reason, None)
        log(WARNING, "round %d, phase %s: node %d skipped (rejected): %s", self.rnd, phase, node,
            reason[:500])

    def failure_counts(self) -> dict[str, int]:
        """This round's failures by kind, as metrics: ``rejected-replies``, ``client-errors``,
        ``timeouts``."""
        counts = Counter(f.kind for per_phase in self.failures.values() for f in per_phase.values())
        return {metric: counts.get(kind, 0) for kind, metric in FAILURE_METRICS.items()}


#: How often the ServerApp asks the SuperLink for replies. Flower's deployed ``Grid`` waits 3 s
#: between pulls in ``send_and_receive`` (1.5 s of idle time per phase on average); one pull of
#: the phase's pending ids every 0.1 s costs the SuperLink one small request.
REPLY_POLL_S = 0.1


class FlowerExchange(RoundExchange):
    """A :class:`RoundExchange` over Flower's ``Grid`` (simulation or deployment): it pushes the
    phase's messages and pulls their replies every :data:`REPLY_POLL_S` until all came or the
    timeout passed (``FEDKD_TRACE``: each message's push and reply time, :mod:`fedkd.runtime.trace`)."""

    def __init__(self, grid: Grid, *args: Any, route: Mapping[int, int] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grid = grid
        #: client id -> Flower node id (``None``: the keys are node ids, as for ``identify``)
        self.route = route

    def node_details(self, node: int) -> dict[str, Any]:
        return {"flower-node-id": node if self.route is None else self.route[node]}

    def addressing(self, node: int) -> dict[str, int]:
        return {LOGICAL_CLIENT_KEY: node} if isinstance(self.route, LogicalRoute) else {}

    def _send(self, phase: PhaseSpec, requests: dict[int, RecordDict]) -> dict[int, RecordDict | Failure]:
        route = self.route
        messages = {
            client: Message(content=content,
                            dst_node_id=client if route is None else route[client],
                            message_type=phase.message_type, group_id=str(self.rnd))
            for client, content in requests.items()
        }
        pushed_at = trace.now()
        deadline = time.monotonic() + self.timeout
        self.grid.push_messages(list(messages.values()))
        target = {m.metadata.message_id: client for client, m in messages.items()}  # ids set on push
        pending = set(target)
        arrived: dict[str, float] = {}
        answers: dict[int, RecordDict | Failure] = {}
        while pending:
            for reply in self.grid.pull_messages(pending):
                msg_id = reply.metadata.reply_to_message_id
                node = target.get(msg_id)
                if node is None or node in answers:
                    continue  # not a reply to this exchange, or a duplicate
                pending.discard(msg_id)
                arrived[msg_id] = trace.now()
                if reply.has_error():
                    answers[node] = Failure("client-error", f"{reply.error.code}: {reply.error.reason}")
                else:
                    answers[node] = reply.content
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(REPLY_POLL_S)
        if trace.path() is not None:
            for msg_id, client in target.items():
                trace.record("server", msg=msg_id, node=messages[client].metadata.dst_node_id,
                             client=client, phase=phase.name, round=self.rnd, push=pushed_at,
                             reply=arrived.get(msg_id))
        return answers


def wait_for_nodes(grid: Grid, min_nodes: int, timeout: float, poll: float = 1.0) -> list[int]:
    """Online node ids, sorted, once at least ``min_nodes`` are online."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= min_nodes:
            return nodes
        if time.monotonic() >= deadline:
            raise NotEnoughNodes(
                f"only {len(nodes)} nodes online after {timeout:g} s; federation.min-nodes = {min_nodes}"
            )
        time.sleep(poll)


def _check_client_id(reply: Payload) -> None:
    value = reply.metrics[CLIENT_ID_KEY]
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise InvalidReply(f"metric {CLIENT_ID_KEY!r} must be an integer >= -1, got {value!r}")


#: Asked once of every node when the server first sees it online: which client it is.
IDENTIFY_PHASE = PhaseSpec(name=IDENTIFY_PHASE_NAME, message_type="query",
                           reply_metrics=(CLIENT_ID_KEY,), check=_check_client_id)


class DuplicateClientId(RuntimeError):
    """Two live nodes claim the same client id (two SuperNodes started with one partition-id)."""


class ClientDirectory:
    """Which client each Flower node is, learnt once per node with the ``identify`` phase.

    ``route`` maps a client id to the node that answers for it now. A client id claimed by a
    new node (a SuperNode restarted under a new node id, while the SuperLink still lists the old
    one for a minute) moves to that node, with a WARNING, and the old node is never asked again:
    two live nodes cannot take turns at one client. Two nodes that claim one id in the same
    identification are a misconfiguration (:class:`DuplicateClientId`). A node whose
    identification failed (timeout, error, malformed reply: logged and audited by the exchange)
    is asked again the next time it is seen online.
    """

    def __init__(self) -> None:
        self.route: dict[int, int] = {}  # client id -> Flower node id
        self._client_of: dict[int, int] = {}  # Flower node id -> client id
        self._superseded: set[int] = set()  # nodes whose client moved to a newer node

    def online(
        self, nodes: Sequence[int], identify: Callable[[list[int]], Mapping[int, Payload]]
    ) -> list[int]:
        """The client ids of the online ``nodes``, sorted; ``identify`` sends the identify phase
        to the given (not yet known) node ids and returns their valid replies by node id."""
        unknown = [n for n in nodes if n not in self._client_of and n not in self._superseded]
        if unknown:
            claims: dict[int, list[int]] = {}
            for node, reply in identify(unknown).items():
                client = int(reply.metrics[CLIENT_ID_KEY])
                claims.setdefault(node if client < 0 else client, []).append(node)
            duplicated = {c: ns for c, ns in claims.items() if len(ns) > 1}
            if duplicated:
                raise DuplicateClientId("several nodes claim one client id: " + "; ".join(
                    f"client {c} by nodes {', '.join(map(str, ns))}" for c, ns in duplicated.items())
                    + " (give each SuperNode its own partition-id or client-id in --node-config)")
            for client, (node,) in claims.items():
                previous = self.route.get(client)
                if previous is not None and previous != node:
                    log(WARNING, "[fedkd] client %d now answers on node %d; node %d, which "
                        "answered for it before, is not asked again", client, node, previous)
                    self._client_of.pop(previous, None)
                    self._superseded.add(previous)
                self.route[client] = node
                self._client_of[node] = client
        present = set(nodes)
        return sorted(c for c, n in self.route.items() if n in present)


class LogicalRoute(Mapping[int, int]):
    """Logical clients (``federation.supernodes > 0``): client ``c`` of the population is served
    by online node ``nodes[c % len(nodes)]``, and every request names its client
    (:data:`fedkd.protocol.LOGICAL_CLIENT_KEY`). Nothing is stored per client: a population of
    millions costs what its online nodes cost. :meth:`update` takes the nodes online now."""

    def __init__(self, population: int) -> None:
        self.population = population
        self.nodes: list[int] = []

    def update(self, nodes: Sequence[int]) -> None:
        self.nodes = sorted(int(n) for n in nodes)

    def clients(self) -> range:
        """Every client of the population: each is reachable through any online node."""
        return range(self.population)

    def __getitem__(self, client: int) -> int:
        if not 0 <= client < self.population or not self.nodes:
            raise KeyError(client)
        return self.nodes[client % len(self.nodes)]

    def __iter__(self):  # noqa: ANN204 - Mapping protocol
        return iter(range(self.population))

    def __len__(self) -> int:
        return self.population


def sample_nodes(nodes: Sequence[int], fraction: float, rng: np.random.Generator,
                 sampling: str = "fixed") -> list[int]:
    """A seeded sample of the sorted client ids ``nodes``, sorted: the same ids and seed give
    the same sample in every run.

    ``sampling`` (``federation.sampling``): ``"fixed"`` takes ``ceil(fraction * len(nodes))`` of
    them (at least one) without replacement; ``"poisson"`` takes each one independently with
    probability ``fraction`` (one uniform draw per id, in the order of ``nodes``), so a sample
    has any size from 0 to ``len(nodes)``: what amplification by sampling assumes.
    """
    if sampling == "poisson":
        keep = rng.random(len(nodes)) < fraction
        return sorted(int(n) for n, kept in zip(nodes, keep) if kept)
    if sampling != "fixed":
        raise ValueError(f"sampling must be 'fixed' or 'poisson', got {sampling!r}")
    k = max(1, int(np.ceil(fraction * len(nodes))))
    if k >= len(nodes):
        return list(nodes)
    # Sample positions, not the ids: Flower's node ids are unsigned 64-bit, and a list that mixes
    # ids above and below 2**63 becomes float64 in numpy (ids silently rounded).
    picked = rng.choice(len(nodes), size=k, replace=False)
    return sorted(int(nodes[i]) for i in picked)


def skip_reason(cfg: RunConfig, online: Sequence[int], sampled: Sequence[int]) -> str | None:
    """Why the round that sampled ``sampled`` of ``online`` does not train, or ``None``.

    Only under Poisson sampling, where a round has any size: one with fewer sampled clients
    than ``federation.min-replies`` is skipped (no request sent, nothing released or charged),
    never redrawn. Redrawing until enough are sampled would make a client's inclusion depend
    on the others' (and raise its probability above ``fraction-train``), which is not the
    independent sampling with probability ``q`` that the server ledger's amplification assumes;
    a skip depends only on the sample's size, never on the clients' data.

    Raises :class:`ValueError` if more clients are online than ``federation.population`` (the
    population the accountant and :func:`skip_probability` assume is wrong).
    """
    fed = cfg.federation
    if fed.sampling != "poisson":
        return None
    population = cfg.client_population()
    if len(online) > population:
        raise ValueError(
            f"{len(online)} clients are online, more than the population of {population} that "
            "Poisson sampling and its privacy accounting assume (federation.population, else "
            "data.num-partitions): set federation.population to the number of clients")
    if len(sampled) < fed.min_replies:
        return (f"Poisson sampling drew {len(sampled)} of {len(online)} online clients, fewer "
                f"than federation.min-replies = {fed.min_replies}: the round is skipped, not "
                "redrawn")
    return None


def skip_probability(cfg: RunConfig) -> float | None:
    """Under Poisson sampling, a bound on the probability that a run of ``num-server-rounds``
    rounds over the whole population skips a round: ``rounds * P(Binomial(population, q) <
    min-replies)``; ``None`` under fixed-size sampling. The server ledger's (epsilon, delta)
    holds for a run that releases in every round; a run that may skip is (epsilon, delta +
    (1 + e^epsilon) * p)-DP with ``p`` this bound (a skip depends only on the sample's size,
    which zero-out adjacency leaves alike on both sides)."""
    fed = cfg.federation
    if fed.sampling != "poisson":
        return None
    from scipy.stats import binom

    per_round = float(binom.cdf(fed.min_replies - 1, cfg.client_population(), fed.fraction_train))
    return min(1.0, cfg.num_server_rounds * per_round)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


ExchangeFactory = Callable[..., RoundExchange]


def run_rounds(
    cfg: RunConfig,
    algorithm: Algorithm,
    data: FederatedData,
    output: RunOutput,
    online_nodes: Callable[[int], Sequence[int]],
    make_exchange: ExchangeFactory,
) -> dict[str, Any]:
    """Run every round; returns the run summary (also written to ``summary.json``).

    Parameters
    ----------
    online_nodes
        Given the round about to run, returns the client ids available now, sorted (waiting
        for a quorum if it must; identifying new nodes, :class:`ClientDirectory`; with logical
        clients the whole population, :class:`LogicalRoute`).
    make_exchange
        Builds a round's :class:`RoundExchange` from ``(rnd, timeout, min_replies, traffic,
        audit=...)``; it addresses clients by client id.
    """
    fed = cfg.federation
    algorithm.setup_server(data)
    rng = np.random.default_rng([cfg.seed, 0x5A3F])
    rows: list[dict[str, Any]] = []
    first_round = 1
    checkpoint = output.load_checkpoint() if cfg.output.resume else None
    if checkpoint is not None:
        check_resumable(checkpoint["run-config"], cfg)
        algorithm.load_server_state(checkpoint["algorithm"])
        rng.bit_generator.state = checkpoint["sampling-rng"]
        rows = list(checkpoint["rows"])
        output.rewrite_metrics(rows)
        first_round = int(checkpoint["round"]) + 1
        log(INFO, "[fedkd] resuming after round %d from %s", first_round - 1, output.directory)
        log_resume_caveats(cfg, first_round - 1)
    else:  # a fresh run: results of an earlier run in the same directory are replaced
        output.start_fresh()
    run_start = time.monotonic()
    for rnd in range(first_round, cfg.num_server_rounds + 1):
        start = time.monotonic()
        timeout = fed.exchange_timeout(rnd)
        online = online_nodes(rnd)
        sampled = sample_nodes(online, fed.fraction_train, rng, fed.sampling)
        skipped = skip_reason(cfg, online, sampled)
        traffic = Traffic()
        exchange = make_exchange(rnd, timeout, fed.min_replies, traffic,
                                 audit=output.append_audit if cfg.output.audit_replies else None,
                                 max_num_examples=fed.max_num_examples)
        row: dict[str, Any] = {"round": rnd, "algorithm": cfg.algorithm, "sampled": len(sampled),
                               "sampled-clients": sampled}
        if skipped is None:
            row.update(algorithm.run_round(rnd, sampled, exchange))
            for name, content in algorithm.round_artifacts().items():
                output.write_artifact(name, content)
        else:
            log(WARNING, "[fedkd] round %d: %s", rnd, skipped)
            row["skipped"] = skipped
        # a round's client-level releases came from one sample: charge them as one (sampled)
        algorithm.server_ledger.end_round()

        # federation.evaluate-every: every k rounds and after the last one (0: never).
        evaluate_now = fed.evaluate_every > 0 and (
            rnd % fed.evaluate_every == 0 or rnd == cfg.num_server_rounds)
        model = algorithm.global_model() if evaluate_now else None
        if model is not None:
            stats = evaluate(model, data.global_test, batch_size=cfg.train.eval_batch_size)
            row.update({"global-accuracy": stats.accuracy, "global-loss": stats.loss})

        clients: dict[str, dict[str, float]] = {}
        if fed.evaluate_clients and evaluate_now:
            request = algorithm.evaluation_request(rnd)
            # logical clients: the round's sample (the whole population is "online")
            asked = sampled if fed.supernodes else online
            result = exchange(EVALUATE_PHASE, {n: request for n in asked}, min_replies=0)
            clients = {str(n): dict(p.metrics) for n, p in sorted(result.replies.items())}
        for node in sorted(set(traffic.up) | set(traffic.down)):
            clients.setdefault(str(node), {}).update(
                {"bytes-up": traffic.up[node], "bytes-down": traffic.down[node]})
        evaluated = [c for c in clients.values() if c.get("num-examples", 0) > 0]
        n_total = sum(c["num-examples"] for c in evaluated)
        on_global = [c["global-test-accuracy"] for c in clients.values()
                     if "global-test-accuracy" in c]
        row.update({
            "personalized-accuracy": _mean([c["accuracy"] for c in evaluated]),
            # federation.client-global-test: the clients' own models on the official test set
            "client-global-accuracy": _mean(on_global),
            "personalized-accuracy-weighted": (
                sum(c["accuracy"] * c["num-examples"] for c in evaluated) / n_total if n_total else None
            ),
            "clients": clients,
            "bytes-down": sum(traffic.down.values()),
            "bytes-up": sum(traffic.up.values()),
            # per sampled client: the mean over the round's participants of what each one sent
            # and received in every phase (its evaluation included); the traffic of nodes that
            # were only asked to evaluate is in the totals above, not here
            "bytes-down-per-client": _mean([traffic.down[n] for n in sampled]) or 0.0,
            "bytes-up-per-client": _mean([traffic.up[n] for n in sampled]) or 0.0,
            "failures": {ph: {str(n): f"{f.kind}: {f.reason}" for n, f in per_phase.items()}
                         for ph, per_phase in exchange.failures.items() if per_phase},
            "num-failures": sum(len(f) for f in exchange.failures.values()),
            # the sampled clients whose every reply of the round's own phases was used
            "trained-clients": [] if skipped else [c for c in sampled if not any(
                c in per_phase for name, per_phase in exchange.failures.items()
                if name != EVALUATE_PHASE.name)],
            **exchange.failure_counts(),
            **privacy_metrics(cfg, clients, algorithm),
            # released once: figures whose release has its own cost (PATE's data-dependent one)
            **(algorithm.final_privacy_report() if rnd == cfg.num_server_rounds else {}),
            "wall-time-s": time.monotonic() - start,
        })
        output.append_metrics(row)
        rows.append(row)
        if cfg.output.checkpoint:
            output.save_checkpoint({
                "round": rnd, "run-config": cfg.to_flat(), "rows": rows,
                "sampling-rng": rng.bit_generator.state, "algorithm": algorithm.server_state(),
            })
        log(INFO, "%s", format_progress(row, cfg.num_server_rounds))

    summary = {
        "algorithm": cfg.algorithm,
        "shares-weights": type(algorithm).shares_weights,
        "rounds": len(rows),
        "final": {k: v for k, v in rows[-1].items() if k not in ("clients", "failures")},
        "best-global-accuracy": max(
            (r["global-accuracy"] for r in rows if r.get("global-accuracy") is not None), default=None
        ),
        "wall-time-s": time.monotonic() - run_start,
        "output-dir": str(output.directory),
        "privacy": {k: v for k, v in rows[-1].items() if k.startswith(("epsilon", "server-epsilon",
                                                                          "delta", "privacy"))},
    }
    output.write_summary(summary)
    return summary


def log_resume_caveats(cfg: RunConfig, checkpoint_round: int) -> None:
    """Say on the console what a resumed run cannot keep exactly.

    The server's state (models, optimisers, sampling generator, rows) resumes exactly. With
    ``federation.client-state = "run"`` so does every client's (:func:`client.app.run_state_dir`):
    a round that was under way is replayed from the state before it. Its privacy releases may
    have left the clients already, so they are charged again: the epsilon is then a bound above
    an uninterrupted run's. With ``"node"`` or ``"disk"`` the clients' state is gone (Flower keeps
    node state for one run): the clients restart from their initial state and ledger, except on
    devices with a node config ``state-dir``.
    """
    store = cfg.federation.client_state
    if store != "run":
        log(WARNING, "[fedkd] resumed with federation.client-state=%r: the clients' own state "
            "(personal models, optimisers, privacy ledgers) did not survive the interruption and "
            "starts again, except on devices with a node config state-dir, so this run will not "
            "end where an uninterrupted one would%s; federation.client-state='run' (what fedkd "
            "simulate and make run choose on one machine) resumes them exactly", store,
            f" (add round {checkpoint_round}'s epsilon for a privacy bound)"
            if cfg.privacy.enabled else "")
    elif cfg.privacy.enabled:
        log(WARNING, "[fedkd] resumed a DP run: a round that was under way when it stopped is "
            "replayed, and its releases are charged again (they may have left the clients), so "
            "the clients' epsilon from round %d on may exceed an uninterrupted run's",
            checkpoint_round + 1)


#: Keys a resumed run may change: how long it runs, and output switches.
RESUMABLE_CHANGES = frozenset({"num-server-rounds", "output.resume", "output.checkpoint"})


def check_resumable(saved: Mapping[str, Any], cfg: RunConfig) -> None:
    """Refuse to resume a checkpoint written with a different configuration."""
    current = cfg.to_flat()
    # clients that keep their state beside the outputs prune it to what a replay of the round
    # after the newest checkpoint needs: checkpoints must go on every round
    resumable = (RESUMABLE_CHANGES - {"output.checkpoint"}
                 if cfg.federation.client_state == "run" else RESUMABLE_CHANGES)
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in resumable and saved.get(k) != current.get(k))
    # keys on one side only (every section is always in the flat config): the checkpoint was
    # written by a fedkd with other settings
    lacking, unknown = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    if lacking or unknown:
        sides = [f"{side}: {', '.join(keys[:8])}" for side, keys in
                 (("settings it lacks", lacking), ("settings this version lacks", unknown)) if keys]
        raise ValueError(
            "the checkpoint in this run directory was written by another version of fedkd "
            f"({'; '.join(sides)}), so it cannot be resumed exactly; use another "
            "output.run-name, or output.resume=false"
        )
    if changed:
        raise ValueError(
            f"the checkpoint in this run directory was written with a different configuration "
            f"({', '.join(changed[:8])}); use another output.run-name, or output.resume=false"
        )


def privacy_metrics(
    cfg: RunConfig, clients: Mapping[str, Mapping[str, Any]], algorithm: Algorithm
) -> dict[str, Any]:
    """The round's privacy report: each client's epsilon is in ``clients``; here the maximum and
    mean over clients (example level, their accountant) and the server's client-level epsilon."""
    out: dict[str, Any] = {}
    p = cfg.privacy
    eps = [float(c["epsilon"]) for c in clients.values() if "epsilon" in c]
    if p.enabled:
        out.update({
            "epsilon-max": max(eps) if eps else None,
            "epsilon-mean": float(np.mean(eps)) if eps else None,
            "delta": p.delta,
            "privacy-accountant": p.accountant,
            "privacy-unit": "example",
        })
    ledger = algorithm.server_ledger
    server_eps = ledger.epsilon()
    if server_eps is not None:
        out.update({"server-epsilon": server_eps, "server-delta": p.delta,
                    "server-accountant": p.server_accountant, "server-privacy-unit": "client"})
        if ledger.amplified:
            # amplification by sampling (federation.sampling = "poisson"): the figure above holds
            # against whoever sees the releases but not who was sampled; the one below against
            # whoever knows each round's sample (the server that draws it)
            out.update({"server-sampling-rate": ledger.sampling_rate,
                        "server-epsilon-unamplified": ledger.epsilon(amplified=False),
                        "server-skip-probability": skip_probability(cfg)})
    return out


def _human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def format_progress(row: Mapping[str, Any], rounds: int) -> str:
    """One human-readable line per round."""
    parts = [f"[fedkd] round {row['round']}/{rounds}"]
    if row.get("global-accuracy") is not None:
        parts.append(f"global acc {row['global-accuracy']:.4f} loss {row['global-loss']:.4f}")
    if row.get("personalized-accuracy") is not None:
        parts.append(f"personal acc {row['personalized-accuracy']:.4f}")
    parts.append(f"up {_human_bytes(row['bytes-up'])} down {_human_bytes(row['bytes-down'])}")
    if row.get("epsilon-max") is not None:
        parts.append(f"eps max {row['epsilon-max']:.2f}")
    if row.get("server-epsilon") is not None:
        parts.append(f"server eps {row['server-epsilon']:.2f}")
    if row["num-failures"]:
        parts.append(f"rejected {row['rejected-replies']} errors {row['client-errors']} "
                     f"timeouts {row['timeouts']} budget-exhausted {row[BUDGET_EXHAUSTED]}")
    parts.append(f"{row['wall-time-s']:.1f} s")
    return " | ".join(parts)
