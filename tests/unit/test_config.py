from __future__ import annotations

from pathlib import Path

import pytest

from fedkd.aggregation import build_rule
from fedkd.compose import build_config
from fedkd.config import ConfigError, RunConfig, pyproject_defaults

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_defaults_match_dataclass_defaults() -> None:
    # Every run-config key has a default in pyproject.toml (Flower rejects others), and those
    # defaults are exactly the dataclasses' own: one source of truth each way.
    # Plugin sections (a rule's options, an algorithm's section) included.
    assert pyproject_defaults(PYPROJECT) == build_config({}).to_flat()


def test_every_registered_section_is_in_pyproject_with_its_defaults() -> None:
    # Section by section (core, rules' options, algorithms' and other plugins' sections), so a
    # failure names the section whose defaults drifted.
    from fedkd.compose import load_plugins
    from fedkd.config import SECTIONS

    load_plugins()
    flat, pyproject = build_config({}).to_flat(), pyproject_defaults(PYPROJECT)
    core = sorted({k.split(".", 1)[0] for k in flat if "." in k} - set(SECTIONS))
    for path in [*core, *sorted(SECTIONS)]:
        ours = {k: v for k, v in flat.items() if k.startswith(path + ".")
                and not any(k.startswith(p + ".") for p in SECTIONS if len(p) > len(path))}
        assert ours, f"section {path} has no keys"
        assert {k: pyproject.get(k) for k in ours} == ours, f"[tool.flwr.app.config.{path}]"


def test_a_rules_constructor_takes_its_defaults_from_its_options() -> None:
    # A rule's option defaults live in its Options dataclass (and aggregation.temperature's in
    # AggregationConfig): the rule built with no arguments equals the configured default rule.
    from fedkd.aggregation import AGGREGATORS

    for name in AGGREGATORS:
        configured = build_rule(build_config({"aggregation.rule": name}))
        assert AGGREGATORS.get(name)().options() == configured.options(), name


def test_from_flat_round_trips() -> None:
    flat = build_config({}).to_flat()
    flat.update({"seed": 7, "data.alpha": 0.1, "train.model": "mlp", "federation.min-nodes": 3})
    cfg = build_config(flat)
    assert cfg.seed == 7 and cfg.data.alpha == 0.1 and cfg.train.model == "mlp"
    assert cfg.federation.min_nodes == 3
    assert build_config(cfg.to_flat()) == cfg


def test_int_accepted_where_float_expected() -> None:
    cfg = build_config({"train.learning-rate": 1})
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
        ({"aggregation.rule": "trimmed-mean", "aggregation.trimmed-mean.trim-fraction": 0.5},
         r"aggregation.trimmed-mean: trim_fraction must be a number in \[0, 0.5\)"),
        ({"aggregation.rule": "era", "aggregation.era.mode": "x"}, r"aggregation.era: era mode must be one of"),
        ({"aggregation.trim-fraction": 0.2}, r"unknown config key 'aggregation.trim-fraction'.*plugin sections: .*aggregation.trimmed-mean"),
        ({"aggregation.pate.nope": 1}, r"unknown config key 'aggregation.pate.nope'; valid keys here: .*aggregation.pate.sigma"),
        ({"distill.loss": "huber"}, r"distill.loss: unknown distillation loss 'huber'; valid names: kl, l1-logits, mse-logits"),
        ({"privacy.server-accountant": "moments"}, r"unknown server accountant 'moments'; valid names: pld, rdp"),
        ({"privacy.dp-sgd": True, "privacy.accountant": "moments"}, r"privacy.accountant: unknown accountant 'moments'; valid names \(Opacus' registry\): .*prv.*rdp"),
        ({"fedgen-logits.input-generator": "gan"}, r"fedgen-logits.input-generator must be one of conv, low-frequency"),
        ({"aggregation.max-abs-logit": 0.0}, r"max-abs-logit must be > 0"),
        ({"distill.public-batch": 0}, r"distill.public-batch must be > 0"),
        ({"distill.steps": -1}, r"distill.steps must be >= 0"),
        ({"distill.average": 1.0}, r"distill.average must be in \[0, 1\)"),
        ({"attack.mode": "zap"}, r"unknown attack 'zap'; valid names: none, .*nan"),
        ({"attack.partitions": "0,x"}, r"attack.partitions must be comma-separated integers"),
    ],
)
def test_invalid_values_give_clear_errors(flat: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(flat)


def test_data_section_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^data: .*alpha"):
        build_config({"data.alpha": -1.0})


def test_build_rule_uses_the_rules_own_section() -> None:
    rule = build_rule(build_config({"aggregation.rule": "trimmed-mean",
                                    "aggregation.trimmed-mean.trim-fraction": 0.3}))
    assert rule.name == "trimmed-mean" and rule.options()["trim_fraction"] == 0.3
    era = build_rule(build_config({"aggregation.rule": "era", "aggregation.era.era-temperature": 0.5,
                                   "aggregation.temperature": 2.0}))
    assert era.options() == {"temperature": 2.0, "era_temperature": 0.5, "mode": "temperature",
                             "beta": 2.0}
    pate = build_rule(build_config({"aggregation.rule": "pate", "aggregation.pate.sigma": 7.0}))
    assert pate.sigma == 7.0 and pate.threshold is None  # threshold 0 in the config: none
    pate = build_rule(build_config({"aggregation.rule": "pate", "aggregation.pate.threshold": 5.0}))
    assert pate.threshold == 5.0


def test_sections_are_registered_by_their_owners() -> None:
    from fedkd.aggregation.pate import PateOptions
    from fedkd.algorithms.fedgen import FedGenConfig
    from fedkd.algorithms.fedgen_logits import FedGenLogitsConfig

    cfg = build_config({"fedgen-logits.synthetic-batch": 17})
    assert isinstance(cfg.section("fedgen"), FedGenConfig)
    assert isinstance(cfg.section("fedgen-logits"), FedGenLogitsConfig)
    assert cfg.section("fedgen-logits").synthetic_batch == 17
    assert cfg.section("aggregation.pate") == PateOptions()
    with pytest.raises(KeyError, match="no config section 'nope'"):
        cfg.section("nope")
    # Core sections only: a plugin key is unknown there.
    with pytest.raises(ConfigError, match="unknown config key 'fedgen-logits.synthetic-batch'"):
        RunConfig.from_flat({"fedgen-logits.synthetic-batch": 17})


def test_algorithm_checks_run_in_build_config() -> None:
    # Bug C: FD under DP-SGD without output noise is refused before anything starts.
    with pytest.raises(ConfigError, match="privacy.output-noise"):
        build_config({"algorithm": "fd", "privacy.dp-sgd": True, "privacy.target-epsilon": 8.0})


def test_era_temperature_of_one_or_more_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"aggregation.era: .*era_temperature"):
        build_config({"aggregation.rule": "era", "aggregation.era.era-temperature": 1.5})


def test_attack_partitions_parse() -> None:
    cfg = build_config({"attack.partitions": "0, 3", "attack.mode": "flip"})
    assert cfg.attack.partition_ids == frozenset({0, 3})


def test_toml_value_round_trips_every_default() -> None:
    import tomllib

    from fedkd.config import toml_value

    for key, value in build_config({}).to_flat().items():
        assert tomllib.loads("v = " + toml_value(value))["v"] == value, key
    assert toml_value('a "quoted" \\ path') == '"a \\"quoted\\" \\\\ path"'
