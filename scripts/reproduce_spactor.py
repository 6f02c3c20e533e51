"""Reproduces the shape of SpacTor's claim (methods.md section 1) at small scale, on the default corpus.

With one seed, one initialisation and one data order (batch k at step k), it trains
  - SC: plain span corruption for 2S steps (its state at step S is the matched-steps baseline);
  - SpacTor(tau): the hybrid objective for tau steps, then span corruption up to S, for each tau;
  - hybrid: the hybrid objective for all S steps (never switched).
The SpacTor(tau) runs branch from the hybrid run's state at tau, which is exactly the state a separate
run would reach (same seed, data and step function). Every run is evaluated on the validation split
(held-out plays) with the plain SC loss on clean inputs, and probed at the end with span-filling exact
match: greedy decoding of the targets, a span counts when every token of it is right.

Writes results/spactor.md (tables) and results/spactor.png (validation loss against steps and FLOPs).

    .venv/bin/python scripts/reproduce_spactor.py                       # default: tiny, ~30 min on 2 cores
    .venv/bin/python scripts/reproduce_spactor.py --size=small --steps=4000   # bigger machines
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's packages, installed or not

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from littlehelp import checkpoints, decoding, optimizers, partitioning, trainer
from littlehelp.data import DatasetConfig
from littlehelp.data.vocab import EOS_ID
from littlehelp.models import T5Config, build_model
from littlehelp.objectives import Curriculum, Objective
from spactor import HybridObjective, flops_ratio, generator_config, total_flops_ratio
from spactor.objective import task_vocabulary_size

TASK = "shakespeare_span_corruption"
SIZES = {  # T5 sizes, feature lengths, batch size and default S per --size
    "tiny": dict(model=dict(emb_dim=128, mlp_dim=256, num_heads=4, head_dim=32, num_encoder_layers=2,
                            num_decoder_layers=2), lengths={"inputs": 128, "targets": 29}, batch=16, steps=600),
    "small": dict(model=dict(emb_dim=512, mlp_dim=1024, num_heads=6, head_dim=64, num_encoder_layers=8,
                             num_decoder_layers=8), lengths={"inputs": 512, "targets": 114}, batch=64, steps=4000),
}


@dataclasses.dataclass
class Curve:
    """One run's validation SC cross-entropy at evaluation steps. `tau`: hybrid steps before the switch
    (0: plain SC; None: hybrid throughout)."""

    name: str
    tau: int | None
    steps: list[int] = dataclasses.field(default_factory=list)
    loss: list[float] = dataclasses.field(default_factory=list)

    def sc_step_equivalents(self, step: int, r: float) -> float:
        """Train FLOPs up to `step`, in units of one SC step: min(step, tau) * r + the SC steps after."""
        hybrid = step if self.tau is None else min(step, self.tau)
        return hybrid * r + step - hybrid


class Study:
    """The shared trainer, data and evaluation of every run."""

    def __init__(self, args: argparse.Namespace):
        size = SIZES[args.size]
        t5 = T5Config(vocab_size=8192, **size["model"])
        self.args, self.steps = args, args.steps or size["steps"]
        self.hybrid = HybridObjective(build_model(t5), generator_config(t5), data_vocab_size=task_vocabulary_size(TASK))
        self.sc = self.hybrid.span_corruption
        batch = args.batch_size or size["batch"]
        self.train_data = DatasetConfig(TASK, size["lengths"], batch, seed=args.seed)
        eval_data = DatasetConfig(TASK, size["lengths"], batch, split="validation", shuffle=False, repeat=False,
                                  pack=False)
        optimizer = optimizers.adafactor(optimizers.inverse_sqrt_schedule(0.01, max(1, self.steps // 10)))
        mesh = partitioning.make_mesh(partitioning.MeshConfig(1, 1, 1), devices=jax.devices()[:1])
        curriculum = Curriculum([(0, self.hybrid), (1, self.sc)])  # the layout holds every model
        self.trainer = trainer.Trainer(args.workdir, curriculum, optimizer, self.train_data, mesh,
                                       partitioning.DEFAULT_RULES, checkpoints.CheckpointConfig())
        self.train_batches = _host_batches(self.train_data, mesh, 2 * self.steps)
        self.eval_batches = _host_batches(eval_data, mesh, args.eval_batches)
        self._eval = jax.jit(lambda params, b: self.sc.loss(params, b, jax.random.key(0), 0)[1])
        self.rng = jax.random.key(args.seed + 1)

    def initial_state(self):
        with self._context():
            return self.trainer.restore_or_init()[0]

    def _context(self):
        return _Both(jax.set_mesh(self.trainer.mesh), nn.logical_axis_rules(self.trainer.rules))

    def train(self, state, objective: Objective, start: int, stop: int, curve: Curve, snapshots=()):
        """Steps [start, stop) of `objective`, evaluating every eval_every steps; returns the state and
        host copies of it at the steps in `snapshots`."""
        step_fn, kept = self.trainer.step_fn(objective), {}
        with self._context():
            for step in range(start, stop):
                if step in snapshots:
                    kept[step] = jax.device_get(state)
                state, _ = step_fn(state, _device(self.train_batches[step]), self.rng)
                if (step + 1) % self.args.eval_every == 0:
                    self.record(curve, step + 1, state)
        return state, kept

    def record(self, curve: Curve, step: int, state) -> None:
        """Appends the validation SC cross-entropy (clean inputs, token-weighted) at `step`."""
        totals = np.zeros(2)
        with self._context():
            for batch in self.eval_batches:
                metrics = jax.device_get(self._eval(state.params, _device(batch)))
                totals += [float(metrics["cross_entropy"]) * float(metrics["weight"]), float(metrics["weight"])]
        curve.steps.append(step)
        curve.loss.append(totals[0] / totals[1])
        print(f"  {curve.name:>14} step {step:5d}  val SC loss {curve.loss[-1]:.4f}", flush=True)

    def probe(self, state) -> float:
        """Span-filling exact match of greedy decoding on the evaluation batches."""
        hits = spans = 0
        for batch in self.eval_batches[: self.args.probe_batches]:
            size = len(batch["encoder_input_tokens"])
            predicted = decoding.generate(
                self.sc.model, state.params["t5"], jnp.zeros((size, 1), jnp.int32), jnp.ones(size, jnp.int32),
                batch["decoder_target_tokens"].shape[1], jax.random.key(0), eos_id=EOS_ID,
                inputs={"encoder_input_tokens": jnp.asarray(batch["encoder_input_tokens"])})
            for gold, guess in zip(batch["decoder_target_tokens"], np.asarray(predicted)):
                gold_spans, guess_spans = _spans(gold, self.hybrid.first_sentinel_id), _spans(guess, self.hybrid.first_sentinel_id)
                hits += sum(guess_spans.get(s) == tokens for s, tokens in gold_spans.items())
                spans += len(gold_spans)
        return hits / max(spans, 1)


class _Both:
    """Enters two context managers as one."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __enter__(self):
        self.first.__enter__()
        self.second.__enter__()

    def __exit__(self, *exc):
        self.second.__exit__(*exc)
        self.first.__exit__(*exc)


def _host_batches(config: DatasetConfig, mesh, count: int) -> list[dict[str, np.ndarray]]:
    return [jax.device_get(b) for b in itertools.islice(trainer.GlobalBatches(config, mesh), count)]


def _device(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _spans(tokens: np.ndarray, first_sentinel: int) -> dict[int, tuple[int, ...]]:
    """Targets `<X0> a b <X1> c ... EOS` -> {sentinel id: tokens of its span}."""
    spans: dict[int, list[int]] = {}
    current = None
    for token in tokens.tolist():
        if token in (0, EOS_ID):
            break
        if token >= first_sentinel:
            current = token
            spans.setdefault(current, [])
        elif current is not None:
            spans[current].append(token)
    return {s: tuple(t) for s, t in spans.items()}


def _place(study: Study, host_state):
    return jax.device_put(host_state, study.trainer.layout.shardings)


def run_all(study: Study) -> tuple[list[Curve], dict[str, float]]:
    """Every run of the study; returns the curves and the probe scores at their ends."""
    s, taus = study.steps, sorted({max(1, round(f * study.steps)) for f in study.args.taus})
    fresh = jax.device_get(study.initial_state())
    sc = Curve("SC", 0)
    state, kept = study.train(_place(study, fresh), study.sc, 0, 2 * s, sc, snapshots={s})
    probes = {"SC@S": study.probe(_place(study, kept[s])), "SC@2S": study.probe(state)}
    hybrid = Curve("hybrid", None)
    state, kept = study.train(_place(study, fresh), study.hybrid, 0, s, hybrid, snapshots=set(taus))
    probes["hybrid"] = study.probe(state)
    curves = [sc, hybrid]
    for tau in taus:
        shared = [i for i, step in enumerate(hybrid.steps) if step <= tau]
        curve = Curve(f"SpacTor({tau})", tau, [hybrid.steps[i] for i in shared], [hybrid.loss[i] for i in shared])
        state, _ = study.train(_place(study, kept[tau]), study.sc, tau, s, curve)
        probes[curve.name] = study.probe(state)
        curves.append(curve)
    return curves, probes


def loss_at(curve: Curve, x: float, r: float, by_flops: bool) -> float:
    """The curve's loss at step (or SC-step-equivalent FLOPs) `x`, linearly interpolated."""
    xs = [curve.sc_step_equivalents(step, r) if by_flops else step for step in curve.steps]
    if not xs or x < xs[0] or x > xs[-1]:
        return float("nan")
    return float(np.interp(x, xs, curve.loss))


def compiled_ratio(study: Study) -> float:
    """r from the compiled steps' cost analysis (all XLA FLOPs, not only matrix multiplies)."""
    def flops(objective):
        analysis = study.trainer.compiled_step(objective).cost_analysis()
        return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    return flops(study.hybrid) / flops(study.sc)


def table(study: Study, curves: list[Curve], probes: dict[str, float], r: float) -> list[str]:
    """Markdown rows: each run at S steps against SC at the same steps and at the same FLOPs."""
    s, sc = study.steps, curves[0]
    lines = ["| run | steps | FLOPs / SC(2S) | val SC loss | SC loss, same steps | SC loss, same FLOPs | span EM |",
             "|---|---|---|---|---|---|---|"]
    lines.append(f"| SC | {2 * s} | 1.000 | {loss_at(sc, 2 * s, r, False):.4f} | - | - | {probes['SC@2S']:.3f} |")
    lines.append(f"| SC | {s} | 0.500 | {loss_at(sc, s, r, False):.4f} | - | - | {probes['SC@S']:.3f} |")
    for curve in curves[1:]:
        spent = curve.sc_step_equivalents(s, r)
        ratio = total_flops_ratio(curve.tau, s, 2 * s, r)
        lines.append(f"| {curve.name} | {s} | {ratio:.3f} | {loss_at(curve, s, r, False):.4f} | "
                     f"{loss_at(sc, s, r, False):.4f} | {loss_at(sc, spent, r, True):.4f} | {probes[curve.name]:.3f} |")
    return lines


def plot(curves: list[Curve], r: float, path: Path) -> None:
    """Validation loss against steps and against FLOPs (in SC-step units)."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    from matplotlib import pyplot  # pylint: disable=import-outside-toplevel

    figure, (by_steps, by_flops) = pyplot.subplots(1, 2, figsize=(11, 4))
    for curve in curves:
        by_steps.plot(curve.steps, curve.loss, label=curve.name)
        by_flops.plot([curve.sc_step_equivalents(s, r) for s in curve.steps], curve.loss, label=curve.name)
    by_steps.set(xlabel="train steps", ylabel="validation SC cross-entropy")
    by_flops.set(xlabel="train FLOPs (SC steps)", ylabel="validation SC cross-entropy")
    by_steps.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_report(study: Study, curves, probes, r: float, r_compiled: float, seconds: float) -> Path:
    args, out = study.args, Path(study.args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(curves, r, out / "spactor.png")
    size = SIZES[args.size]
    lines = [
        "# SpacTor reproduction (scripts/reproduce_spactor.py)", "",
        f"Command: `.venv/bin/python scripts/reproduce_spactor.py --size={args.size} --steps={study.steps} "
        f"--taus={','.join(map(str, args.taus))} --eval_every={args.eval_every}`  ",
        f"Task `{TASK}` (train plays; validation = held-out plays), T5 {size['model']}, lengths {size['lengths']}, "
        f"batch {study.train_data.batch_size}, Adafactor with inverse-sqrt schedule, seed {args.seed}; "
        f"generator {study.hybrid.generator_config.emb_dim} wide x {study.hybrid.generator_config.num_layers} layers; "
        f"S = {study.steps}. Wall time {seconds / 60:.1f} min.", "",
        f"r (hybrid step / SC step, matrix-multiply FLOPs from the core counter) = {r:.3f}; "
        f"from XLA's cost analysis of the compiled steps = {r_compiled:.3f}.", "",
        *table(study, curves, probes, r), "",
        "Val SC loss: token cross-entropy of the decoder on clean span-corrupted validation inputs "
        f"({args.eval_batches} batches). 'Same FLOPs': the SC run's loss at the step where it had spent the "
        "run's FLOPs (interpolated between evaluations). Span EM: span-filling exact match of greedy decoding "
        f"on {args.probe_batches} validation batches.", "",
        "![validation loss](spactor.png)",
    ]
    path = out / "spactor.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=0, help="S (default: per size); SC runs 2S")
    parser.add_argument("--taus", type=lambda v: [float(x) for x in v.split(",")], default=[0.25, 0.5],
                        help="tau values as fractions of S")
    parser.add_argument("--eval_every", type=int, default=20)
    parser.add_argument("--eval_batches", type=int, default=8)
    parser.add_argument("--probe_batches", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results")
    parser.add_argument("--workdir", default="/tmp/reproduce_spactor", help="an empty folder (nothing is saved)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    start = time.perf_counter()
    study = Study(parse_args(argv))
    r = flops_ratio(study.hybrid, study.trainer.batch_spec)
    curves, probes = run_all(study)
    path = write_report(study, curves, probes, r, compiled_ratio(study), time.perf_counter() - start)
    print(path.read_text())


if __name__ == "__main__":
    main()
