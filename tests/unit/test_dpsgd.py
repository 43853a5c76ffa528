from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedkd.config import PrivacyConfig
from fedkd.data.datasets import ArrayDataset
from fedkd.models import build_model
from fedkd.privacy.dpsgd import (
    HISTORY_KEY,
    BudgetExhausted,
    ClientPrivacy,
    calibrated_noise_multiplier,
    epsilon_of,
)
from fedkd.privacy.output_noise import private_counts
from fedkd.training import seeded_generator

warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")


def data(n: int = 96) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(x=rng.uniform(-1, 1, (n, 1, 8, 8)).astype(np.float32),
                        y=rng.integers(0, 10, n).astype(np.int64))


def fit(privacy: ClientPrivacy, model: torch.nn.Module, rnd: int, steps: int = 6) -> None:
    privacy.fit(model, data(), steps=steps, batch_size=16, learning_rate=0.1,
                generator=seeded_generator(0, rnd))


def opacus_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
               for m in model.modules())


def test_ledger_carried_across_rounds_equals_one_accountant_over_all_steps() -> None:
    cfg = PrivacyConfig(dp_sgd=True, noise_multiplier=1.1, max_grad_norm=1.0)
    state: dict[str, np.ndarray] = {}
    model = build_model("mlp", (1, 8, 8), 10)
    for rnd in range(1, 4):  # a fresh ClientPrivacy each round, as in a fresh process
        privacy = ClientPrivacy(cfg, state, planned_rounds=3)
        fit(privacy, model, rnd)
        privacy.save()
        assert opacus_hooks(model) == 0  # nothing left behind between rounds
    # 96 examples, batch 16: q = 1/6; 3 rounds x 6 steps.
    np.testing.assert_allclose(state[HISTORY_KEY], [[1.1, 1 / 6, 18]])
    reference = RDPAccountant()
    reference.history = [(1.1, 1 / 6, 18)]
    expected = reference.get_epsilon(delta=1e-5)
    assert ClientPrivacy(cfg, state, 3).epsilon() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(5.2095, abs=1e-3)  # pinned: Opacus RDP, delta 1e-5


def test_releases_compose_in_the_same_ledger() -> None:
    cfg = PrivacyConfig(dp_sgd=True, noise_multiplier=1.0, output_noise=5.0)
    state: dict[str, np.ndarray] = {}
    privacy = ClientPrivacy(cfg, state, planned_rounds=1)
    fit(privacy, build_model("mlp", (1, 8, 8), 10), 1)
    privacy.account(private_counts(data().y, 10, 5.0, np.random.default_rng(0)))
    reference = RDPAccountant()
    reference.history = [(1.0, 1 / 6, 6), (5.0, 1.0, 1)]
    assert privacy.epsilon() == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)


def test_budget_exhaustion_stops_before_training() -> None:
    cfg = PrivacyConfig(dp_sgd=True, noise_multiplier=1.0, epsilon_budget=5.0)
    state: dict[str, np.ndarray] = {}
    model = build_model("mlp", (1, 8, 8), 10)
    privacy = ClientPrivacy(cfg, state, planned_rounds=5)
    fit(privacy, model, 1)  # 6 steps at q 1/6: epsilon 4.26; 12 steps would be 5.34
    privacy.save()
    before = [p.detach().clone() for p in model.parameters()]
    privacy = ClientPrivacy(cfg, state, planned_rounds=5)
    with pytest.raises(BudgetExhausted, match="budget-exhausted: epsilon .* so far, .* after this round, budget 5"):
        fit(privacy, model, 2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # did not train
    assert privacy.epsilon() == pytest.approx(4.2569, abs=1e-3)


def test_target_epsilon_calibrates_the_whole_run() -> None:
    cfg = PrivacyConfig(dp_sgd=True, target_epsilon=3.0)
    state: dict[str, np.ndarray] = {}
    model = build_model("mlp", (1, 8, 8), 10)
    for rnd in (1, 2):
        privacy = ClientPrivacy(cfg, state, planned_rounds=2)
        fit(privacy, model, rnd)
        privacy.save()
    eps = ClientPrivacy(cfg, state, 2).epsilon()
    assert 2.9 <= eps <= 3.0  # get_noise_multiplier's tolerance is 0.01 below the target
    sigma = calibrated_noise_multiplier(3.0, 1e-5, 1 / 6, 12, "rdp")
    assert state[HISTORY_KEY][0][0] == pytest.approx(sigma)


def test_epsilon_of_empty_history_is_zero_and_accountant_must_not_change() -> None:
    assert epsilon_of([], 1e-5, "rdp") == 0.0
    state: dict[str, np.ndarray] = {}
    p = ClientPrivacy(PrivacyConfig(dp_sgd=True), state, 1)
    p.history.append((1.0, 0.1, 10))
    p.save()
    with pytest.raises(ValueError, match="kept with the 'rdp' accountant, not 'prv'"):
        ClientPrivacy(PrivacyConfig(dp_sgd=True, accountant="prv"), state, 1)


def test_ghost_mode_trains_and_refuses_extra_loss_terms() -> None:
    cfg = PrivacyConfig(dp_sgd=True, grad_sample_mode="ghost")
    model = build_model("mlp", (1, 8, 8), 10)
    privacy = ClientPrivacy(cfg, {}, 1)
    stats = privacy.fit(model, data(), steps=4, batch_size=16, learning_rate=0.1,
                        generator=seeded_generator(0))
    assert stats.steps == 4 and opacus_hooks(model) == 0
    with pytest.raises(ValueError, match="ghost.*not one: use 'hooks'"):
        privacy.fit(model, data(), steps=1, batch_size=16, learning_rate=0.1,
                    generator=seeded_generator(0), extra_loss=lambda m, x, y, z: z.sum() * 0)


def test_privacy_spend_survives_a_client_restart_through_its_state_file(tmp_path) -> None:
    from client.app import load_privacy_file, save_privacy_file

    cfg = PrivacyConfig(dp_sgd=True, noise_multiplier=1.0)
    path = tmp_path / "node0-privacy.npz"
    model = build_model("mlp", (1, 8, 8), 10)
    for rnd in (1, 2):  # each round in a "new process": only the file carries the ledger over
        state = load_privacy_file(path)
        state["model/weight"] = np.zeros(3, np.float32)  # other state is not written to the file
        privacy = ClientPrivacy(cfg, state, planned_rounds=2)
        fit(privacy, model, rnd)
        privacy.save()
        save_privacy_file(path, state)
    restored = load_privacy_file(path)
    assert set(restored) == {"privacy/history", "privacy/mechanism"}
    np.testing.assert_allclose(restored[HISTORY_KEY], [[1.0, 1 / 6, 12]])
    assert ClientPrivacy(cfg, restored, 2).epsilon() == pytest.approx(epsilon_of([(1.0, 1 / 6, 12)], 1e-5, "rdp"))


def test_target_epsilon_covers_the_releases_too() -> None:
    # Bug F: the README's FD example (target 8, output noise 5, two releases a round) ended at
    # 8.47 when only DP-SGD's steps were calibrated. Now the planned run ends at or below 8.
    from fedkd.config import PrivacyConfig

    cfg = PrivacyConfig(dp_sgd=True, target_epsilon=8.0, output_noise=5.0)
    rounds, steps, q = 10, 20, 1 / 13
    only_steps = ClientPrivacy(cfg, {}, rounds)
    with_releases = ClientPrivacy(cfg, {}, rounds, releases_per_round=2)
    releases = [(5.0, 1.0, 2 * rounds)]

    def planned(sigma: float) -> float:
        return epsilon_of([(sigma, q, steps * rounds), *releases], 1e-5, "rdp")

    assert planned(only_steps.noise_multiplier(q, steps)) > 8.2  # the old calibration overshot
    sigma = with_releases.noise_multiplier(q, steps)
    assert 7.95 <= planned(sigma) <= 8.0
    assert sigma > only_steps.noise_multiplier(q, steps)


def test_a_target_the_releases_alone_exceed_is_refused() -> None:
    with pytest.raises(ValueError, match="planned output releases alone .* spend epsilon"):
        calibrated_noise_multiplier(1.0, 1e-5, 0.1, 100, "rdp", 1.0, 50)


def test_every_release_is_checked_against_the_budget() -> None:
    from fedkd.config import PrivacyConfig
    from fedkd.privacy.output_noise import Release

    cfg = PrivacyConfig(output_noise=2.0, epsilon_budget=3.0)
    ledger = ClientPrivacy(cfg, {}, 10)
    release = Release(values=np.zeros(3), noise_multiplier=2.0, sensitivity=1.0, std=2.0)
    charged = 0
    with pytest.raises(BudgetExhausted):
        for _ in range(100):
            ledger.account(release)
            charged += 1
    assert 0 < charged < 100 and ledger.epsilon() <= 3.0
    assert len(ledger.history) == charged  # the refused release was not recorded


def test_auto_mode_takes_ghost_for_a_large_dense_layer_and_hooks_otherwise() -> None:
    from fedkd.privacy.dpsgd import grad_sample_mode

    cnn, small = build_model("cnn", (1, 28, 28), 10), build_model("fedgen-cnn", (1, 28, 28), 10)
    assert grad_sample_mode("auto", cnn, None) == "ghost"  # a 3136 x 512 dense layer
    assert grad_sample_mode("auto", small, None) == "hooks"  # 784 x 32 at most
    assert grad_sample_mode("auto", cnn, lambda m, x, y, z: z.sum()) == "hooks"  # not per sample
    assert grad_sample_mode("hooks", cnn, None) == "hooks"


@pytest.mark.parametrize("loss_name", ["kl", "l1-logits", "mse-logits"])
def test_a_per_sample_term_trains_the_same_under_ghost_and_hooks(loss_name: str) -> None:
    # FD's distillation term as a per-sample loss: with (almost) no noise and the same Poisson
    # batches, ghost clipping and per-sample gradients clip the same per-sample losses alike.
    from fedkd.losses import distillation_loss

    loss = distillation_loss(loss_name)
    targets = torch.softmax(torch.randn(10, 10, generator=torch.Generator().manual_seed(1)), 1)

    def term(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * loss(logits, targets[y], 2.0, reduction="none")

    trained = {}
    for mode in ("hooks", "ghost"):
        cfg = PrivacyConfig(dp_sgd=True, grad_sample_mode=mode, noise_multiplier=1e-6,
                            max_grad_norm=0.5)
        torch.manual_seed(0)
        model = build_model("mlp", (1, 8, 8), 10)
        ClientPrivacy(cfg, {}, 1).fit(model, data(), steps=5, batch_size=16, learning_rate=0.1,
                                      generator=seeded_generator(0), per_sample_loss=term)
        trained[mode] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    moved = (trained["hooks"] - build_model_seeded()).abs().max()
    assert moved > 1e-3  # it trained
    torch.testing.assert_close(trained["ghost"], trained["hooks"], atol=1e-5, rtol=1e-4)


def build_model_seeded() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.cat([p.detach().reshape(-1) for p in build_model("mlp", (1, 8, 8), 10).parameters()])


@pytest.mark.parametrize("loss_name", ["kl", "l1-logits", "mse-logits"])
def test_per_sample_distillation_losses_average_to_the_batch_loss(loss_name: str) -> None:
    from fedkd.losses import distillation_loss

    loss = distillation_loss(loss_name)
    g = torch.Generator().manual_seed(0)
    z, p = torch.randn(7, 5, generator=g), torch.softmax(torch.randn(7, 5, generator=g), 1)
    rows = loss(z, p, 1.5, reduction="none")
    assert rows.shape == (7,)
    torch.testing.assert_close(rows.mean(), loss(z, p, 1.5))
    with pytest.raises(ValueError, match="reduction"):
        loss(z, p, 1.5, reduction="sum")
