"""The ServerApp (component ``server.app:app`` in pyproject.toml)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from logging import INFO, WARNING
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedkd.compose import build_algorithm, build_config
from fedkd.data.federated import load_federated
from fedkd.runtime.flower_patches import patch_simulation_engine
from fedkd.protocol import Payload
from fedkd.results import RunOutput
from server.loop import (
    IDENTIFY_PHASE,
    ClientDirectory,
    FlowerExchange,
    LogicalRoute,
    NotEnoughNodes,
    Traffic,
    run_rounds,
    wait_for_nodes,
)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Build the config once, then run the algorithm's rounds and write the outputs."""
    # In a simulation this process also runs Flower's engine: index its message polling.
    patch_simulation_engine()
    cfg = build_config(context.run_config)
    data = load_federated(cfg.data)
    algorithm = build_algorithm(cfg, data.num_classes, data.input_shape)
    if algorithm.shares_weights:
        log(WARNING, "[fedkd] %s is a WEIGHT-SHARING BASELINE: clients upload model weights",
            cfg.algorithm)
    output = RunOutput.for_config(cfg)
    log(INFO, "[fedkd] %s on %s, %d rounds; outputs in %s", cfg.algorithm, cfg.data.dataset,
        cfg.num_server_rounds, output.directory)
    fed = cfg.federation
    directory = ClientDirectory()
    audit = output.append_audit if cfg.output.audit_replies else None
    # federation.supernodes > 0: logical clients, the population served by the online nodes
    logical = LogicalRoute(cfg.client_population()) if fed.supernodes else None

    def online_clients(rnd: int) -> Sequence[int]:
        nodes = wait_for_nodes(grid, fed.min_nodes, fed.node_wait_timeout)
        if logical is not None:
            logical.update(nodes)
            return logical.clients()

        def identify(unknown: list[int]) -> dict[int, Payload]:
            exchange = FlowerExchange(grid, rnd, fed.exchange_timeout(rnd), 0, Traffic(),
                                      audit=audit)
            return exchange(IDENTIFY_PHASE, {n: Payload() for n in unknown}).replies

        clients = directory.online(nodes, identify)
        if not clients:
            raise NotEnoughNodes(
                f"round {rnd}: none of the {len(nodes)} online nodes said which client it is (the "
                "identify phase); why is logged above (node ... skipped)")
        return clients

    summary = run_rounds(
        cfg, algorithm, data, output,
        online_nodes=online_clients,
        make_exchange=lambda *args, **kwargs: FlowerExchange(
            grid, *args, route=directory.route if logical is None else logical, **kwargs),
    )
    log(INFO, "[fedkd] done: %d rounds in %.1f s; results in %s", summary["rounds"],
        summary["wall-time-s"], output.directory)
    if fed.client_state == "disk":  # node (or logical client) state lasts one run, as in Flower
        shutil.rmtree(Path(cfg.output.dir).expanduser().resolve() / "client-state"
                      / f"run-{context.run_id}", ignore_errors=True)
