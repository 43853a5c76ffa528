from __future__ import annotations

from pathlib import Path

import pytest

from fedkd.config import ConfigError, RunConfig, pyproject_defaults

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_defaults_match_dataclass_defaults() -> None:
    # Every run-config key has a default in pyproject.toml (Flower rejects others), and those
    # defaults are exactly the dataclasses' own: one source of truth each way.
    assert pyproject_defaults(PYPROJECT) == RunConfig().to_flat()


def test_from_flat_round_trips() -> None:
    flat = RunConfig().to_flat()
    flat.update({"seed": 7, "data.alpha": 0.1, "train.model": "mlp", "federation.min-nodes": 3})
    cfg = RunConfig.from_flat(flat)
    assert cfg.seed == 7 and cfg.data.alpha == 0.1 and cfg.train.model == "mlp"
    assert cfg.federation.min_nodes == 3
    assert RunConfig.from_flat(cfg.to_flat()) == cfg


def test_int_accepted_where_float_expected() -> None:
    cfg = RunConfig.from_flat({"train.learning-rate": 1})
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ({"nope": 1}, r"unknown config key 'nope'; valid keys here: .*algorithm"),
        ({"train.nope": 1}, r"unknown config key 'train.nope'; valid keys here: .*train.local-steps"),
        ({"seed.x": 1}, r"'seed' is not a section"),
        ({"train": 1}, r"'train' is a section"),
        ({"seed": 1.5}, r"seed must be an integer, got 1.5"),
        ({"seed": True}, r"seed must be an integer"),
        ({"train.learning-rate": "fast"}, r"train.learning-rate must be a number"),
        ({"train.learning-rate": float("nan")}, r"train.learning-rate must be finite"),
        ({"train.learning-rate": -0.1}, r"train.learning-rate must be > 0"),
        ({"train.momentum": 1.0}, r"train.momentum must be in \[0, 1\)"),
        ({"federation.evaluate-clients": 1}, r"federation.evaluate-clients must be true or false"),
        ({"federation.fraction-train": 0.0}, r"fraction-train must be in \(0, 1\]"),
        ({"federation.min-replies": 5, "federation.min-nodes": 2}, r"min-replies \(5\) cannot exceed"),
        ({"num-server-rounds": 0}, r"num-server-rounds must be > 0"),
        ({"algorithm": "fedfoo"}, r"unknown algorithm 'fedfoo'; valid names: .*fedavg"),
        ({"train.model": "vgg"}, r"unknown model 'vgg'; valid names: .*cnn"),
        ({"output.run-name": "a/b"}, r"run-name must be a plain name"),
        ({"train.model": 3}, r"train.model must be a string"),
        ({"aggregation.rule": "avg"}, r"aggregation.rule: unknown aggregation rule 'avg'; valid names: .*median"),
        ({"aggregation.trim-fraction": 0.5}, r"trim-fraction must be in \[0, 0.5\)"),
        ({"aggregation.era-mode": "x"}, r"era-mode must be 'temperature' or 'power'"),
        ({"aggregation.max-abs-logit": 0.0}, r"max-abs-logit must be > 0"),
        ({"distill.public-batch": 0}, r"distill.public-batch must be > 0"),
        ({"distill.steps": -1}, r"distill.steps must be >= 0"),
        ({"attack.mode": "zap"}, r"unknown attack 'zap'; valid names: none, .*nan"),
        ({"attack.partitions": "0,x"}, r"attack.partitions must be comma-separated integers"),
    ],
)
def test_invalid_values_give_clear_errors(flat: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_flat(flat)


def test_data_section_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^data: .*alpha"):
        RunConfig.from_flat({"data.alpha": -1.0})


def test_aggregation_config_builds_the_rule_with_its_options() -> None:
    rule = RunConfig.from_flat({"aggregation.rule": "trimmed-mean",
                                "aggregation.trim-fraction": 0.3}).aggregation.build()
    assert rule.name == "trimmed-mean" and rule.options()["trim_fraction"] == 0.3
    era = RunConfig.from_flat({"aggregation.rule": "era", "aggregation.era-temperature": 0.5}
                              ).aggregation.build()
    assert era.options()["era_temperature"] == 0.5


def test_era_temperature_of_one_or_more_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"aggregation: .*era_temperature"):
        RunConfig.from_flat({"aggregation.rule": "era", "aggregation.era-temperature": 1.5})


def test_attack_partitions_parse() -> None:
    cfg = RunConfig.from_flat({"attack.partitions": "0, 3", "attack.mode": "flip"})
    assert cfg.attack.partition_ids == frozenset({0, 3})
