"""What DP-SGD buys against membership inference: a loss-threshold attack (Yeom et al. 2018).

One Fashion-MNIST client: client ``--partition`` of an IID split of the pool into ``--clients``
clients (so that its data, its held-out data and the official test set share one distribution).
From its local train split, a seeded draw gives ``--members`` training examples (the members) and
an equal number of disjoint examples it never trains on (the non-members). The client model
(``--model``) is trained on the members for ``--epochs`` passes of batch ``--batch-size``, with
fedkd's own code:

* ``no DP``: :func:`fedkd.training.fit_supervised`;
* ``DP-SGD eps=E``: ``ClientPrivacy(PrivacyConfig(dp_sgd=True, target_epsilon=E), {},
  planned_rounds=1).fit(...)`` (Opacus, hooks, clip 1.0, delta 1e-5, RDP accountant, the noise
  multiplier calibrated by fedkd to spend E over the steps), same steps and learning rate.

Two attacks, each scoring the 2 x ``--members`` candidates and measured by ROC AUC
(``sklearn.metrics.roc_auc_score``, members = 1; 0.5 is chance):

* **model attack** (Yeom et al.): score = minus the candidate's cross-entropy loss under the
  trained model (logits from :func:`fedkd.training.predict_logits`);
* **release attack**: on what an FD client releases, its per-class mean logits over its training
  data. Without DP these are the plain per-class means of the model's logits over the members;
  with DP they are released as FD's ``_private_statistics`` does: ``private_class_sums`` (clip
  ``--output-clip``) + ``private_counts`` with output noise ``--output-noise``, both accounted in
  the same ledger as the DP-SGD steps, then ``noisy_class_means`` (classes whose noisy count is
  below 1 released as 0). Score = minus the L2 distance between the candidate's logit row and the
  released mean of its label. Two variants: the candidate's logit row from the client's own model
  (an attacker that also holds the model: this mixes the model's leakage into the score), and
  from a *reference* model trained without DP on fedkd's public set (disjoint from the client's
  data; an attacker that holds only the release and a model of its own, as an FD server or peer).

Epsilon is the example-level epsilon at delta 1e-5 read from the client's ledger
(``ClientPrivacy.epsilon``): after training (model), and after the two releases are accounted
(model + release). Without DP it is infinite.

The same loss attack with the reference model (which never saw the members) is reported as a
baseline: it shows how far from 0.5 the chance difference between one draw of members and
non-members puts any AUC.

Run (about 3-7 minutes on 2 CPU cores with the defaults)::

    .venv/bin/python -m benchmarks.membership_inference [--model fedgen-cnn] [--seeds 0,1,2]

Writes ``benchmarks/results/membership_inference.{json,md}`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import opacus
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from fedkd.config import PrivacyConfig
from fedkd.data.datasets import ArrayDataset
from fedkd.data.federated import DataSpec, load_federated
from fedkd.experiments.report import mean_std, mean_std_cell, table_lines
from fedkd.models import build_model
from fedkd.privacy.dpsgd import ClientPrivacy
from fedkd.privacy.output_noise import noisy_class_means, private_class_sums, private_counts
from fedkd.training import evaluate, fit_supervised, predict_logits, seeded_generator

ROOT = Path(__file__).resolve().parent.parent

# Independent streams derived from the seed.
_SPLIT_STREAM, _INIT_STREAM, _TRAIN_STREAM, _RELEASE_STREAM, _REFERENCE_STREAM = 1, 2, 3, 4, 5


def per_example_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels),
                           reduction="none").numpy()


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    scores = np.concatenate([member_scores, nonmember_scores]).astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise FloatingPointError("non-finite attack scores: the model diverged (lower --lr)")
    truth = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    return float(roc_auc_score(truth, scores))


def release_scores(logits: np.ndarray, labels: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Minus the L2 distance of each logit row to the released mean of its label."""
    return -np.linalg.norm(logits.astype(np.float64) - means[labels].astype(np.float64), axis=1)


def fresh_model(name: str, input_shape: tuple[int, int, int], num_classes: int, *seeds: int):
    torch.manual_seed(int(np.random.SeedSequence(list(seeds)).generate_state(1)[0]))
    return build_model(name, input_shape, num_classes)


def run_setting(eps: float, seed: int, members: ArrayDataset, nonmembers: ArrayDataset,
                reference_logits: tuple[np.ndarray, np.ndarray], test: ArrayDataset,
                input_shape: tuple[int, int, int], num_classes: int,
                args: argparse.Namespace) -> dict[str, Any]:
    """Train one client model (eps 0: no DP), release its class means, attack both."""
    model = fresh_model(args.model, input_shape, num_classes, seed, _INIT_STREAM)
    steps = args.epochs * math.ceil(len(members) / args.batch_size)
    kwargs = dict(steps=steps, batch_size=args.batch_size, learning_rate=args.lr,
                  generator=seeded_generator(seed, _TRAIN_STREAM))
    t0 = time.process_time()
    out: dict[str, Any] = {"setting": "no DP" if eps == 0 else f"DP-SGD eps={eps:g}",
                           "target-epsilon": eps or None, "seed": seed, "steps": steps}
    if eps == 0:
        fit_supervised(model, members, **kwargs)
        train_logits = predict_logits(model, members.x)
        sums = np.zeros((num_classes, num_classes))
        np.add.at(sums, members.y, train_logits.astype(np.float64))
        counts = np.bincount(members.y, minlength=num_classes)
        means = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        out.update({"noise-multiplier": 0.0, "epsilon-model": math.inf,
                    "epsilon-model-and-release": math.inf})
    else:
        cfg = PrivacyConfig(dp_sgd=True, target_epsilon=eps, delta=args.delta,
                            max_grad_norm=args.max_grad_norm, output_noise=args.output_noise,
                            output_clip=args.output_clip)
        ledger = ClientPrivacy(cfg, {}, planned_rounds=1)
        ledger.fit(model, members, releases=2, **kwargs)
        out["noise-multiplier"] = ledger.history[0][0]
        out["epsilon-model"] = ledger.epsilon()
        # The release, as FD's _private_statistics makes it from the DP-trained model.
        rng = np.random.default_rng([seed, _RELEASE_STREAM])
        train_logits = predict_logits(model, members.x)
        sums_r = private_class_sums(train_logits, members.y, num_classes, clip_bound=cfg.output_clip,
                                    noise_multiplier=cfg.output_noise, rng=rng)
        counts_r = private_counts(members.y, num_classes, noise_multiplier=cfg.output_noise, rng=rng)
        ledger.account(sums_r)
        ledger.account(counts_r)
        ledger.save()
        means, present = noisy_class_means(sums_r, counts_r)
        means[~present] = 0.0
        out["epsilon-model-and-release"] = ledger.epsilon()
    out["train-cpu-s"] = time.process_time() - t0

    mem_logits, non_logits = predict_logits(model, members.x), predict_logits(model, nonmembers.x)
    out["train-accuracy"] = evaluate(model, members).accuracy
    out["test-accuracy"] = evaluate(model, test).accuracy
    out["model-attack-auc"] = auc(-per_example_loss(mem_logits, members.y),
                                  -per_example_loss(non_logits, nonmembers.y))
    out["release-attack-auc"] = auc(release_scores(mem_logits, members.y, means),
                                    release_scores(non_logits, nonmembers.y, means))
    ref_mem, ref_non = reference_logits
    # The same loss attack with a model that never saw the members: any distance from 0.5 is
    # the chance difference between this member draw and this non-member draw (the floor).
    out["loss-auc-reference-model-baseline"] = auc(-per_example_loss(ref_mem, members.y),
                                                   -per_example_loss(ref_non, nonmembers.y))
    out["release-attack-auc-reference-model"] = auc(release_scores(ref_mem, members.y, means),
                                                    release_scores(ref_non, nonmembers.y, means))
    return out


def fmt_eps(v: float | None) -> str:
    return "inf" if v is None or math.isinf(v) else f"{v:.2f}"


def fmt_sigma(v: float) -> str:
    return "-" if v == 0 else f"{v:.3f}"


def table(results: list[dict[str, Any]], settings: list[str], seeds: list[int]) -> str:
    header = ["setting", "seed", "sigma", "eps model", "eps model + release", "train acc",
              "test acc", "model-attack AUC", "release-attack AUC (client model)",
              "release-attack AUC (reference model)", "baseline: loss AUC of reference model"]
    cells = []
    cols = ("train-accuracy", "test-accuracy", "model-attack-auc", "release-attack-auc",
            "release-attack-auc-reference-model", "loss-auc-reference-model-baseline")
    for s in settings:
        rows = [r for r in results if r["setting"] == s]
        for r in rows:
            cells.append([s, r["seed"], fmt_sigma(r["noise-multiplier"]), fmt_eps(r["epsilon-model"]),
                          fmt_eps(r["epsilon-model-and-release"]), *(f"{r[c]:.3f}" for c in cols)])
        if len(rows) > 1:
            eps_m = [r["epsilon-model"] for r in rows]
            eps_r = [r["epsilon-model-and-release"] for r in rows]
            sig = [r["noise-multiplier"] for r in rows]
            cells.append([f"**{s}**", "mean ± sd", fmt_sigma(statistics.mean(sig)),
                          fmt_eps(statistics.mean(eps_m)), fmt_eps(statistics.mean(eps_r)),
                          *(f"**{mean_std_cell(mean_std([r[c] for r in rows]), '.3f')}**"
                            for c in cols)])
    return "\n".join(table_lines(header, cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fedgen-cnn")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=60, help="passes over the members")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--epsilons", default="1,4,8", help="DP-SGD target epsilons")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--output-noise", type=float, default=2.0)
    parser.add_argument("--output-clip", type=float, default=10.0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    epsilons = [float(e) for e in args.epsilons.split(",") if e.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    start = time.perf_counter()

    fed = load_federated(DataSpec(dataset="fashion-mnist", partitioner="iid",
                                  num_partitions=args.clients, seed=args.data_seed))
    local = fed.client(args.partition).train
    if 2 * args.members > len(local):
        raise SystemExit(f"client {args.partition} has {len(local)} local train samples: "
                         f"--members {args.members} needs {2 * args.members}")
    print(f"client {args.partition}: {len(local)} local train samples; {args.members} members, "
          f"{args.members} non-members; public set {len(fed.public)}; model {args.model}", flush=True)

    results: list[dict[str, Any]] = []
    for seed in seeds:
        order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(len(local))
        members = local.subset(np.sort(order[: args.members]))
        nonmembers = local.subset(np.sort(order[args.members: 2 * args.members]))
        # The reference model: no DP, on the public set (disjoint from every client's data).
        ref = fresh_model(args.model, fed.input_shape, fed.num_classes, seed, _REFERENCE_STREAM)
        fit_supervised(ref, fed.public, steps=args.epochs * math.ceil(args.members / args.batch_size),
                       batch_size=args.batch_size, learning_rate=args.lr,
                       generator=seeded_generator(seed, _REFERENCE_STREAM))
        reference_logits = (predict_logits(ref, members.x), predict_logits(ref, nonmembers.x))
        for eps in [0.0, *epsilons]:
            r = run_setting(eps, seed, members, nonmembers, reference_logits, fed.global_test,
                            fed.input_shape, fed.num_classes, args)
            results.append(r)
            print(f"  seed {seed} {r['setting']:<16} eps {fmt_eps(r['epsilon-model'])}/"
                  f"{fmt_eps(r['epsilon-model-and-release'])} train {r['train-accuracy']:.3f} "
                  f"test {r['test-accuracy']:.3f} model AUC {r['model-attack-auc']:.3f} "
                  f"release AUC {r['release-attack-auc']:.3f} / "
                  f"{r['release-attack-auc-reference-model']:.3f} "
                  f"({r['train-cpu-s']:.1f} s CPU)", flush=True)
    settings = list(dict.fromkeys(r["setting"] for r in results))

    n = args.members
    null_sd = math.sqrt((2 * n + 1) / (12 * n * n))  # AUC's sd under no leakage (Mann-Whitney)
    steps = args.epochs * math.ceil(n / args.batch_size)
    command = (f".venv/bin/python -m benchmarks.membership_inference --model {args.model} "
               f"--members {n} --epochs {args.epochs} --epsilons {args.epsilons} --seeds {args.seeds}")
    header = (
        f"Membership inference against one FD client. Fashion-MNIST, IID split into "
        f"{args.clients} clients, client {args.partition}: {n} members (its training data) and "
        f"{n} non-members (disjoint held-out samples of the same client, same distribution), "
        f"drawn per seed. Model `{args.model}`, {args.epochs} epochs = {steps} steps of batch "
        f"{args.batch_size}, lr {args.lr:g}, no momentum; DP-SGD by `ClientPrivacy.fit` "
        f"(opacus {opacus.__version__}, hooks, clip {args.max_grad_norm:g}, RDP accountant, noise "
        f"multiplier sigma calibrated by fedkd to the target epsilon at delta {args.delta:g}). "
        f"Release: FD's per-class mean logits over the members (no DP: plain means; DP: "
        f"`private_class_sums` + `private_counts`, output noise {args.output_noise:g}, clip "
        f"{args.output_clip:g}, `noisy_class_means`; both releases accounted in the client's "
        f"ledger). eps: the ledger's example-level epsilon at delta {args.delta:g} after "
        f"training, and after the release. Model attack: score = -loss (Yeom et al. 2018). "
        f"Release attack: score = -L2 distance of the candidate's logit row to the released mean "
        f"of its label, the row from the client's model or from a reference model (`{args.model}`"
        f" trained without DP on the {len(fed.public)}-sample public set, disjoint from the "
        f"client's data). Baseline: the model attack run with the reference model, which never "
        f"saw the members: its distance from 0.5 is what this draw of members and non-members "
        f"gives by chance (the same in every row of a seed). AUC: members = 1; 0.5 is chance, "
        f"and with {n} + {n} candidates its sd "
        f"under no leakage is {null_sd:.3f} (so |AUC - 0.5| < {2 * null_sd:.3f} is within noise). "
        f"Test accuracy on the official test set (10,000). torch {torch.__version__} CPU, "
        f"`torch.set_num_threads(1)`; run on a shared 2-core machine "
        f"({os.cpu_count()} CPUs visible, another benchmark possibly running), "
        f"{time.perf_counter() - start:.0f} s wall in all.\n\nCommand: `{command}`"
    )
    md = header + "\n\n" + table(results, settings, seeds) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "membership_inference.md").write_text(md)
    json_results = [{k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in r.items()}
                    for r in results]  # JSON has no infinity: null means "no DP, infinite"
    (out / "membership_inference.json").write_text(json.dumps({
        "command": command, "args": vars(args), "local-train-samples": len(local),
        "public-samples": len(fed.public), "auc-null-sd": null_sd, "torch": torch.__version__,
        "opacus": opacus.__version__, "cpu-count": os.cpu_count(),
        "wall-s": time.perf_counter() - start, "results": json_results,
    }, indent=2))
    print(md)


if __name__ == "__main__":
    main()
