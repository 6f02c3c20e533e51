"""FedAvg vs FedPA (methods.md section 6) on label-skewed digits clients -> results/fedpa.{json,md,png}.

    python scripts/reproduce_fedpa.py                 # default: 8 seeds, ~4 minutes on 2 CPU cores
    python scripts/reproduce_fedpa.py --quick         # smoke run: 2 seeds, 30 rounds, under a minute
    python scripts/reproduce_fedpa.py --rhos 0.01 0.3 --gin "federated.FedConfig.server_lr = 0.5"

Data: scikit-learn's bundled digits (1797 8x8 images, no download), pixels scaled to [0, 1], a
stratified 70/30 train/test split per seed. The train split is dealt to
clients by label shards (McMahan et al. 2017): examples sorted by label, cut into
clients x shards_per_client equal shards, each client gets shards_per_client random shards, so with
two shards most clients hold two classes. Model: multinomial logistic regression (--hidden for an MLP)
with an l2 term (a Gaussian prior), so the training objective is convex with one minimum, found
centrally by full-batch L-BFGS per seed; "better optima" is then measured as the objective's distance
above that minimum.

Runs per seed, all from `federated.FedConfig()` (its defaults, then any --gin bindings):
- FedAvg;
- FedPA for each shrinkage rho in --rhos (FedAvg mode for the first `fedavg_rounds` rounds);
- per rho a control: FedAvg with server_lr x (1 + (n - 1) rho). FedPA's delta is
  (1 + (n - 1) rho) (I + rho M)^{-1} (x - mean), i.e. the FedAvg-like x - mean scaled up by that factor
  wherever the samples barely vary; the control tells that larger step apart from the covariance
  correction.
Per seed the split, the shards, the initialisation, the clients sampled each round and their
minibatches are shared by every run (paired comparisons). Measured every --eval_every rounds: test
accuracy and cross-entropy, and the training objective (mean loss plus l2 term over all training examples, the
quantity federated learning minimises) minus its L-BFGS minimum.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's packages, installed or not

import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy import optimize  # noqa: E402
from sklearn import datasets, model_selection  # noqa: E402

from federated import (ClientData, FedConfig, LossFn, make_classifier, shard_split, shrinkage_weight,  # noqa: E402
                       train)
from littlehelp.metrics import machine_load, write_report  # noqa: E402

METRICS = ("test_accuracy", "test_loss", "suboptimality")  # tabled and plotted; histories also hold train_loss
LABELS = {"test_accuracy": "test accuracy", "test_loss": "test cross-entropy",
          "suboptimality": "training objective - its L-BFGS minimum"}
NUM_CLASSES = 10
QUICK = {"num_rounds": 30, "fedavg_rounds": 10}
Runs = list[dict[str, list[dict]]]  # per seed: variant name -> history


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="seeds, each a paired set of runs (>= 2 for s.e.)")
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.01, 0.1], help="FedPA shrinkage values to run")
    parser.add_argument("--num_clients", type=int, default=20)
    parser.add_argument("--test_fraction", type=float, default=0.3)
    parser.add_argument("--shards_per_client", type=int, default=2)
    parser.add_argument("--hidden", type=int, nargs="*", default=[],
                        help="MLP widths (default: none, i.e. logistic regression)")
    parser.add_argument("--l2", type=float, default=1e-3, help="l2 / 2 |params|^2 in every loss (a Gaussian prior)")
    parser.add_argument("--eval_every", type=int, default=5, help="rounds between evaluations")
    parser.add_argument("--gin", action="append", default=[], help="gin bindings, e.g. 'federated.FedConfig.rho = 0.1'")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: 2 seeds and {QUICK}")
    parser.add_argument("--output_dir", default="results")
    return parser.parse_args()


@dataclasses.dataclass(frozen=True)
class Split:
    """One seed's data: the label-shard clients (their union is the train split) and the test split."""

    clients: ClientData
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def make_split(seed: int, test_fraction: float, num_clients: int, shards_per_client: int) -> Split:
    """Seed's stratified digits split, pixels in [0, 1], with the train split dealt by label shards."""
    images, labels = datasets.load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = model_selection.train_test_split(
        (images / 16.0).astype(np.float32), labels.astype(np.int32), test_size=test_fraction, random_state=seed,
        stratify=labels)
    parts = shard_split(train_y, num_clients, shards_per_client, np.random.default_rng(seed))
    clients = ClientData.from_lists([train_x[p] for p in parts], [train_y[p] for p in parts])
    return Split(clients, train_x, train_y, test_x, test_y)


def fedpa_name(rho: float) -> str:
    """The FedPA run with shrinkage `rho`."""
    return f"FedPA rho={rho:g}"


def step_factor(base: FedConfig, rho: float) -> float:
    """1 / r = 1 + (n - 1) rho: how much larger FedPA's delta is than x - mean where the samples barely vary."""
    return 1 / shrinkage_weight(base.num_samples, rho)


def control_name(base: FedConfig, rho: float) -> str:
    """The FedAvg run whose server step is FedPA's `step_factor` larger."""
    return f"FedAvg, server_lr x {step_factor(base, rho):g}"


def variants(base: FedConfig, rhos: list[float]) -> dict[str, FedConfig]:
    """Variant name -> config: FedAvg, FedPA per rho, then per rho FedAvg with FedPA's step factor."""
    runs = {"FedAvg": dataclasses.replace(base, algorithm="fedavg")}
    runs.update({fedpa_name(rho): dataclasses.replace(base, algorithm="fedpa", rho=rho) for rho in sorted(rhos)})
    runs.update({control_name(base, rho): dataclasses.replace(base, algorithm="fedavg",
                                                              server_lr=base.server_lr * step_factor(base, rho))
                 for rho in sorted(rhos)})
    return runs


def central_optimum(loss: LossFn, params: jax.Array, inputs: jax.Array, targets: jax.Array) -> float:
    """The training objective's minimum found by full-batch L-BFGS on the pooled train split from `params`
    (the global minimum for the convex logistic regression; a local one for an MLP)."""
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: loss(p, inputs, targets)))

    def objective(p: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = value_and_grad(jnp.asarray(p, params.dtype))
        return float(value), np.asarray(grad, np.float64)

    result = optimize.minimize(objective, np.asarray(params, np.float64), jac=True, method="L-BFGS-B",
                               options={"maxiter": 10_000, "gtol": 1e-9, "ftol": 1e-15})
    return float(result.fun)


def run_seed(configs: dict[str, FedConfig], args: argparse.Namespace, seed: int) -> dict[str, list[dict]]:
    """Every variant's history for one seed (same split, initialisation and client sampling)."""
    split = make_split(seed, args.test_fraction, args.num_clients, args.shards_per_client)
    model, params = make_classifier(split.train_x.shape[1], NUM_CLASSES, args.hidden, jax.random.PRNGKey(seed),
                                    args.l2)
    test_x, test_y, train_x, train_y = map(jnp.asarray, (split.test_x, split.test_y, split.train_x, split.train_y))
    scores = jax.jit(lambda p: (model.accuracy(p, test_x, test_y), model.cross_entropy(p, test_x, test_y),
                                model.loss(p, train_x, train_y)))
    optimum = central_optimum(model.loss, params, train_x, train_y)

    def evaluate(p: jax.Array) -> dict[str, float]:
        accuracy, test_loss, train_loss = map(float, scores(p))
        return {"test_accuracy": accuracy, "test_loss": test_loss, "train_loss": train_loss,
                "suboptimality": train_loss - optimum}

    histories = {}
    for name, config in configs.items():
        started = time.perf_counter()
        _, histories[name] = train(dataclasses.replace(config, seed=seed), model.loss, params, split.clients,
                                   evaluate, args.eval_every)
        last = histories[name][-1]
        print(f"  seed {seed} {name:28s}: test accuracy {last['test_accuracy']:.4f}, test cross-entropy "
              f"{last['test_loss']:.4f}, train objective {last['train_loss']:.4f} (minimum {optimum:.4f}) "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
    return histories


def curves(runs: Runs, name: str, metric: str) -> tuple[list[int], np.ndarray]:
    """Evaluated rounds and the [seeds, rounds] values of `metric` for variant `name`."""
    rounds = [r["round"] for r in runs[0][name]]
    return rounds, np.array([[r[metric] for r in run[name]] for run in runs])


def mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the mean over the first axis (s.e. 0 for one seed)."""
    se = values.std(axis=0, ddof=1) / math.sqrt(len(values)) if len(values) > 1 else np.zeros_like(values[0])
    return values.mean(axis=0), se


def table_rounds(rounds: list[int], fedavg_rounds: int) -> list[int]:
    """Rounds shown in the tables: the switch to FedPA, a quarter, half and three quarters of the rest,
    and the last (each the nearest evaluated round)."""
    wanted = [fedavg_rounds + (rounds[-1] - fedavg_rounds) * q // 4 for q in range(5)]
    return sorted({min(rounds, key=lambda r: abs(r - w)) for w in wanted if w > 0})


def summary(runs: Runs, fedavg_rounds: int) -> dict[str, dict]:
    """metric -> round -> {variant: (mean, s.e.), "<variant> - FedAvg": paired (mean, s.e.)} over seeds."""
    names = list(runs[0])
    result: dict[str, dict] = {}
    for metric in METRICS:
        rounds, baseline = curves(runs, "FedAvg", metric)
        values = {name: curves(runs, name, metric)[1] for name in names}
        result[metric] = {}
        for r in table_rounds(rounds, fedavg_rounds):
            i = rounds.index(r)
            row = {name: tuple(map(float, mean_se(v[:, i]))) for name, v in values.items()}
            row.update({f"{name} - FedAvg": tuple(map(float, mean_se(v[:, i] - baseline[:, i])))
                        for name, v in values.items() if name != "FedAvg"})
            result[metric][r] = row
    return result


def first_round(runs: Runs, name: str, metric: str, target: float) -> int | None:
    """First evaluated round whose mean `metric` over seeds reaches `target` (accuracy: >=, losses: <=)."""
    rounds, values = curves(runs, name, metric)
    mean = values.mean(axis=0)
    reached = mean >= target if metric == "test_accuracy" else mean <= target
    return rounds[int(np.argmax(reached))] if reached.any() else None


def signed(label: str, diff: tuple[float, float]) -> str:
    """'label +d ± se', flagged when within 2 s.e. of zero."""
    return f"{label} {diff[0]:+.4f} ± {diff[1]:.4f}" + ("" if abs(diff[0]) > 2 * diff[1] else " (within 2 s.e. of 0)")


def compare(runs: Runs, name: str, baseline: str) -> tuple[str, bool, bool]:
    """Variant `name` against `baseline` at the last round, paired over seeds, and in rounds to reach the
    baseline's final mean test accuracy and training objective. Returns the sentence, whether `name` ends
    better (accuracy up and objective down, each by more than 2 s.e.) and whether it reaches both sooner."""
    last = {}
    for metric in METRICS:
        rounds, ours = curves(runs, name, metric)
        last[metric] = tuple(map(float, mean_se(ours[:, -1] - curves(runs, baseline, metric)[1][:, -1])))
    targets = {m: float(curves(runs, baseline, m)[1][:, -1].mean()) for m in ("test_accuracy", "suboptimality")}
    reach = {m: (first_round(runs, baseline, m, t), first_round(runs, name, m, t)) for m, t in targets.items()}
    accuracy, suboptimality = last["test_accuracy"], last["suboptimality"]
    better = accuracy[0] > 2 * accuracy[1] and suboptimality[0] < -2 * suboptimality[1]
    sooner = all(b is not None and a is not None and b < a for a, b in reach.values())
    speed = "; ".join(f"{baseline}'s final mean {LABELS[m]} ({t:.4f}) is first reached at round "
                      f"{reach[m][0]} by {baseline} and {reach[m][1] if reach[m][1] is not None else 'never'} by {name}"
                      for m, t in targets.items())
    sentence = (f"**{name}** minus **{baseline}** at round {rounds[-1]} (paired over seeds): "
                f"{signed('test accuracy', last['test_accuracy'])}, {signed('test cross-entropy', last['test_loss'])}, "
                f"{signed('training objective', suboptimality)}. {speed}.")
    return sentence, better, sooner


CLAIM = {(True, True): "holds: it gets there sooner and ends at a better optimum",
         (True, False): "holds in part: it ends at a better optimum but does not get there sooner",
         (False, True): "holds in part: it gets there sooner but does not end at a clearly better optimum",
         (False, False): "does not hold"}
CONTROL = {(True, True): "FedPA keeps its edge over the larger FedAvg step: sooner and better",
           (True, False): "FedPA ends better than the larger FedAvg step but does not get there sooner",
           (False, True): "FedPA gets there sooner than the larger FedAvg step but does not end clearly better",
           (False, False): "FedAvg with the same larger step does as well or better, so whatever FedPA gains over "
                           "FedAvg here comes from the step size, not from the covariance correction"}


def verdicts(runs: Runs, controls: dict[str, str]) -> list[str]:
    """Per FedPA variant (the keys of `controls`): a paragraph against FedAvg and one against its control."""
    paragraphs = []
    for name, control in controls.items():
        sentence, better, sooner = compare(runs, name, "FedAvg")
        paragraphs.append(f"{sentence} \"Converges faster, to better optima\" {CLAIM[(better, sooner)]}.")
        sentence, better, sooner = compare(runs, name, control)
        paragraphs.append(f"{sentence} Against the control: {CONTROL[(better, sooner)]}.")
    return paragraphs


def format_table(table: dict[str, dict], metric: str) -> str:
    """Markdown: one row per variant and per paired difference, one column per tabled round, mean ± s.e."""
    by_round = table[metric]
    rows = list(next(iter(by_round.values())))
    lines = ["| run | " + " | ".join(f"round {r}" for r in by_round) + " |", "|---" * (len(by_round) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(f"{by_round[r][row][0]:.4f} ± {by_round[r][row][1]:.4f}"
                                               for r in by_round) + " |")
    return "\n".join(lines)


def markdown(report: dict, table: dict[str, dict], runs: Runs) -> str:
    """The report's Markdown: set-up, tables per metric, the verdicts and the plot."""
    config, setup = report["config"], report["setup"]
    model = f"MLP with hidden widths {setup['hidden']}" if setup["hidden"] else "multinomial logistic regression"
    minimum = "a local minimum" if setup["hidden"] else "the global minimum: the objective is convex"
    parts = [
        "# FedPA vs FedAvg on label-skewed digits", "",
        f"Generated by `{report['command']}` in {report['seconds'] / 60:.1f} minutes; machine load before / after: "
        f"{report['load_before']['load_average']} / {report['load_after']['load_average']} "
        f"(`{report['load_after']['uptime']}`).", "",
        f"Data: scikit-learn digits (pixels / 16), a stratified train/test split per seed (test fraction "
        f"{setup['test_fraction']}); the train split dealt to {setup['num_clients']} clients by label shards "
        f"({setup['shards_per_client']} shards per client, so mostly {setup['shards_per_client']} classes each; "
        f"{setup['examples_per_client']} examples per client). Model: {model} on flat parameter vectors, flax "
        f"default initialisation, l2 = {setup['l2']:g} on every parameter in every loss. The training objective's "
        f"minimum is found per seed by full-batch L-BFGS on the pooled train split ({minimum}). {setup['seeds']} "
        "seeds; each seed draws its own split, shards, initialisation, client sampling and minibatches, shared by "
        "every run.", "",
        "Settings (`federated.FedConfig`, shared by every run; FedAvg ignores the FedPA-only knobs): "
        + ", ".join(f"{k}={v}" for k, v in config.items() if k not in ("algorithm", "seed", "rho")) + ". "
        f"Runs: {', '.join(runs[0])}. The \"FedAvg, server_lr x k\" runs are controls: FedPA's delta is the "
        "FedAvg-like x - mean scaled by k = 1 + (n - 1) rho wherever the samples barely vary, and each control "
        "takes its FedPA run's larger step without the covariance correction.", "",
        "## Mean ± standard error over seeds (differences paired per seed)", "",
    ]
    for metric in METRICS:
        parts += [f"### {LABELS[metric]}", "", format_table(table, metric), ""]
    parts += ["## Does \"converges faster, to better optima\" hold here?", ""]
    parts += [paragraph + "\n" for paragraph in verdicts(runs, report["controls"])]
    parts += ["![test accuracy, test cross-entropy and training objective above its minimum, against rounds]"
              "(fedpa.png)", ""]
    return "\n".join(parts)


def plot(runs: Runs, output_dir: Path, fedavg_rounds: int) -> None:
    """Learning curves (mean ± s.e. over seeds) of every metric and variant to output_dir/fedpa.png."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    figure, axes = pyplot.subplots(1, len(METRICS), figsize=(4.8 * len(METRICS), 3.8))
    for axis, metric in zip(axes, METRICS):
        for name in runs[0]:
            rounds, values = curves(runs, name, metric)
            mean, se = mean_se(values)
            axis.plot(rounds, mean, label=name, linewidth=1.2)
            axis.fill_between(rounds, mean - se, mean + se, alpha=0.2)
        axis.axvline(fedavg_rounds, color="grey", linestyle=":", linewidth=1)
        axis.set(xlabel="round", ylabel=LABELS[metric])
        if metric == "test_accuracy":
            axis.set_ylim(0.8, 1.0)
        elif all(r[metric] > 0 for run in runs for history in run.values() for r in history):
            axis.set_yscale("log")
    axes[0].legend(title="dotted: FedPA leaves FedAvg mode", fontsize=7, title_fontsize=7)
    figure.tight_layout()
    figure.savefig(output_dir / "fedpa.png", dpi=110)


def main() -> None:
    args = parse_args()
    gin.parse_config(args.gin)
    base = dataclasses.replace(FedConfig(), **QUICK) if args.quick else FedConfig()
    seeds = 2 if args.quick else args.seeds
    configs = variants(base, args.rhos)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    load_before, started = machine_load(), time.perf_counter()
    runs = [run_seed(configs, args, seed) for seed in range(seeds)]
    seconds = time.perf_counter() - started
    counts = make_split(0, args.test_fraction, args.num_clients, args.shards_per_client).clients.counts
    table = summary(runs, base.fedavg_rounds)
    report = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "seconds": seconds, "load_before": load_before, "load_after": machine_load(),
        "config": dataclasses.asdict(base),
        "variants": {name: dataclasses.asdict(c) for name, c in configs.items()},
        "controls": {fedpa_name(rho): control_name(base, rho) for rho in sorted(args.rhos)},
        "setup": {"num_clients": args.num_clients, "shards_per_client": args.shards_per_client, "hidden": args.hidden,
                  "l2": args.l2,
                  "seeds": seeds, "eval_every": args.eval_every, "test_fraction": args.test_fraction,
                  "examples_per_client": f"{counts.min()}-{counts.max()}"},
        "summary": {m: {str(r): row for r, row in by_round.items()} for m, by_round in table.items()},
        "runs": runs,
    }
    plot(runs, output_dir, base.fedavg_rounds)
    write_report(output_dir, "fedpa", report, markdown(report, table, runs))


if __name__ == "__main__":
    main()
