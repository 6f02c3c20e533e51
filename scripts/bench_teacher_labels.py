"""Stored teacher labels benchmark: SALT's KD step reading a label store against one running the teacher.

The student and teacher are the SALT study's (salt_lm/gin/salt/models.gin: a ~4.0M student, a ~0.56M
teacher, vocabulary 8192; `--bindings` rebinds them), randomly initialised: no measured cost depends on
the parameters' values, and the quantisation is measured on a random teacher (recorded in the report).
For each k in `--top_ks` a real store (`teacher_labels.build_store`) labels the first `--store_examples`
examples of `--task`'s `--split` at `--length` tokens (a Task registered over them), then:
- step time: one jitted training step (loss + gradient w.r.t. the student's parameters through
  `jax.value_and_grad` of the objective's `loss`, then an Adam update, the same in every arm) on one
  batch of `--batch` packed rows as the study trains: the plain LM step (`DecoderObjective`), SALT's
  KD step with the live teacher (`DistillationObjective(teacher=...)`, its parameters an argument) and
  with the store's labels (`DistillationObjective(teacher=None)`, the batch read from the labelled Task:
  `teacher_ids` / `teacher_log_probs` [b, l * k] and `teacher_log_rest` [b, l], float32 after float16
  rounding), all compiled first, then timed interleaved (`--rounds`, after one untimed round); the
  ratios to the plain step are taken per round and their median reported;
- memory: XLA's `memory_analysis()` of each compiled step (peak = temp + argument + output), with the
  teacher's parameter bytes (an argument of the live step only) and the labels' bytes (of the stored);
- disk: the store's bytes per token (`teacher_labels.bytes_per_token`) and their breakdown;
- quantisation: over the whole store, the stored float16 log-probabilities against the float32
  `losses.top_k_labels` of the same teacher logits (`teacher_labels.batch_labels`), and the sparse FKL
  of a random student under either.
The load average and the float32 matmul rate are measured in the same run (`littlehelp.benchmark`).
Targets (the stored-labels issue): stored step <= 1.05 x the plain LM step; <= 400 bytes per token at k = 64.

    python scripts/bench_teacher_labels.py           # the default run (about 5-8 minutes on 2 idle cores)
    python scripts/bench_teacher_labels.py --quick   # the study's quick models, 8 docstrings, k = 64: ~20 s
writes results/bench_teacher_labels.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import flax.linen as nn  # noqa: E402
import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

import littlehelp.data  # noqa: E402,F401  (registers the built-in tasks)
from littlehelp import config, frozen, losses  # noqa: E402
from littlehelp.benchmark import Benchmark, header_markdown, interleaved  # noqa: E402
from littlehelp.data import derived_tasks, pipeline, teacher_labels  # noqa: E402
from littlehelp.features import (  # noqa: E402
    DECODER_INPUT_TOKENS,
    DECODER_LOSS_WEIGHTS,
    TARGETS,
    TEACHER_IDS,
    TEACHER_LOG_PROBS,
    TEACHER_LOG_REST,
)
from littlehelp.models import DecoderConfig, Model, build_model  # noqa: E402
from littlehelp.objectives import DecoderObjective, Objective, stored_teacher_labels  # noqa: E402
from littlehelp.typing import Batch, Params  # noqa: E402
from salt_lm import reproduction  # noqa: E402
from salt_lm.objective import DistillationObjective  # noqa: E402

MIB = 2**20
MODELS_GIN = "salt/models.gin"  # the study's teacher / student pair
STUDENT_SEED, TEACHER_SEED = 0, 1
TEACHER_RECORD = {"path": f"random initialisation (seed {TEACHER_SEED})", "select": "model", "step": 0}
MAX_STEP_RATIO, BYTES_K, MAX_BYTES_PER_TOKEN = 1.05, 64, 400  # the targets
LABELS = (TEACHER_IDS, TEACHER_LOG_PROBS, TEACHER_LOG_REST)
QUICK = {  # the study's --quick models on a few docstrings, tiny batches, small matmul checks
    "task": "docstrings_lm",
    "split": "validation",  # 91 docstrings: the training split's 2,303 take seconds to read
    "length": 32,
    "batch": 2,
    "store_examples": 8,
    "store_batch": 4,
    "top_ks": [BYTES_K],  # one store: each k costs a store, a compiled step and a quantisation pass
    "bindings": [f"{name}={value}" for name, value in reproduction.QUICK_BINDINGS.items() if "DecoderConfig" in name],
    "matmul_sizes": [128],
    "matmul_repeats": 2,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags (see the module docstring); `--quick` changes the defaults to QUICK's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and data (a smoke run)")
    parser.add_argument("--task", default="shakespeare_lm", help="the study's Task")
    parser.add_argument("--split", default="train")
    parser.add_argument("--length", type=int, default=reproduction.LENGTH, help="tokens per row (the study's)")
    parser.add_argument("--batch", type=int, default=reproduction.BATCH, help="rows per step (the study's)")
    parser.add_argument("--top_ks", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--store_examples", type=int, default=256, help="examples of the split labelled")
    parser.add_argument("--store_batch", type=int, default=32, help="rows per teacher call building a store")
    parser.add_argument("--omega", type=float, default=0.5, help="the soft labels' share")
    parser.add_argument("--chunk_size", type=int, default=losses.DEFAULT_CHUNK_SIZE, help="positions per head chunk")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Adam's, in every arm")
    parser.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds (at least 5)")
    parser.add_argument("--bindings", nargs="*", default=[], help=f"gin bindings for {MODELS_GIN}")
    parser.add_argument("--matmul_sizes", nargs="+", type=int, default=[2048, 4096])
    parser.add_argument("--matmul_repeats", type=int, default=5)
    parser.add_argument("--out_dir", default=str(REPO / "results"))
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK)
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error(f"--rounds must be at least 5, got {args.rounds}")
    return args


# ----------------------------------------------------------------------------------------------
# Models and data.


def salt_pair(bindings: Sequence[str]) -> tuple[DecoderConfig, DecoderConfig]:
    """(student, teacher) configs of salt/models.gin with `bindings` applied."""
    config.parse_gin([MODELS_GIN], bindings)
    try:
        return config.macro_value("STUDENT_CONFIG"), config.macro_value("TEACHER_CONFIG")
    finally:
        gin.clear_config()


def random_params(model: Model, length: int, seed: int) -> Params:
    """The model's randomly initialised parameters (its own initialisers)."""
    example = {DECODER_INPUT_TOKENS: np.zeros((1, length), np.int32)}
    return nn.unbox(jax.jit(model.init)(jax.random.key(seed), example))


def tree_bytes(tree: Any) -> int:
    """Bytes of every array in `tree`."""
    return sum(int(np.asarray(leaf).nbytes) for leaf in jax.tree.leaves(tree))


def register_head_task(args: argparse.Namespace) -> str:
    """Registers and names a Task whose `--split` holds the first `--store_examples` examples of `--task`'s
    (their targets cut at `--length`, kept in memory), its other splits the source's."""
    source, length = seqio.get_mixture_or_task(args.task), {TARGETS: args.length}
    head = derived_tasks.source_split(source, args.split, length).take(args.store_examples)
    targets = [example[TARGETS] for example in head.as_numpy_iterator()]
    signature = {TARGETS: tf.TensorSpec([None], tf.int32)}
    in_memory = lambda: tf.data.Dataset.from_generator(  # noqa: E731
        lambda: ({TARGETS: example} for example in targets), output_signature=signature
    )
    name = f"{args.task}_first{args.store_examples}"
    derived_tasks.register_with_splits(name, source, {args.split: in_memory}, length)
    return name


def labelled_batches(task: str, args: argparse.Namespace, batch_size: int, pack: bool) -> Iterator[Batch]:
    """`task`'s `--split` as LM batches (labels included), in order, one epoch."""
    dataset = seqio.get_dataset(
        task,
        {TARGETS: args.length},
        pipeline.LMFeatureConverter(pack=pack),
        dataset_split=args.split,
        shuffle=False,
        num_epochs=1,
        verbose=False,
    )
    return dataset.batch(batch_size).as_numpy_iterator()


def without_labels(batch: Batch) -> Batch:
    """The batch's LM features alone."""
    return {name: value for name, value in batch.items() if name not in LABELS}


# ----------------------------------------------------------------------------------------------
# Stores.


def build_store(
    head_task: str, teacher: Model, params: Params, top_k: int, args: argparse.Namespace, root: Path
) -> tuple[dict[str, Any], str]:
    """(manifest, labelled Task name) of a new store of the head Task's split at `top_k`."""
    store_config = teacher_labels.StoreConfig(
        head_task, {TARGETS: args.length}, args.split, top_k, args.store_batch, chunk_size=args.chunk_size
    )
    record = TEACHER_RECORD | {"fingerprint": frozen.fingerprint(params)}
    store_dir, labelled = root / f"top{top_k}", f"{head_task}_teacher_top{top_k}"
    manifest = teacher_labels.build_store(teacher, params, record, store_config, store_dir)
    teacher_labels.register_labelled_task(labelled, [store_dir])
    return manifest, labelled


def disk_record(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A store's size: bytes per token and their breakdown (payload fields, then the records' framing)."""
    top_k, vocab = manifest["top_k"], manifest["vocab_size"]
    ids = top_k * teacher_labels.id_dtype(vocab).itemsize
    log_probs = top_k * np.dtype(np.float16).itemsize
    payload = teacher_labels.expected_bytes_per_token(top_k, vocab)
    per_token = teacher_labels.bytes_per_token(manifest)
    return {
        "top_k": top_k,
        "examples": manifest["examples"],
        "tokens": manifest["tokens"],
        "bytes": manifest["bytes"],
        "build_seconds": manifest["seconds"],
        "bytes_per_token": per_token,
        "ids_bytes_per_token": ids,
        "log_probs_bytes_per_token": log_probs,
        "other_fields_bytes_per_token": payload - ids - log_probs,
        "framing_bytes_per_token": per_token - payload,
    }


# ----------------------------------------------------------------------------------------------
# Steps.


def train_step(objective: Objective, optimizer: optax.GradientTransformation) -> Callable:
    """(student params, frozen params, optimizer state, batch) -> (new params, new state, loss)."""

    def step(student: Params, frozen_params: Params, state: optax.OptState, batch: Batch):
        loss_of = lambda p: objective.loss({"model": p, **frozen_params}, batch, None, 0)[0]  # noqa: E731
        loss, grads = jax.value_and_grad(loss_of)(student)
        updates, state = optimizer.update(grads, state, student)
        return optax.apply_updates(student, updates), state, loss

    return step


def compile_arm(
    name: str, objective: Objective, frozen_params: Params, batch: Batch, student: Params, args: argparse.Namespace
) -> dict[str, Any]:
    """One arm's compiled step, its arguments and its record (compile time, FLOPs, memory)."""
    optimizer = optax.adam(args.learning_rate)
    arguments = (student, frozen_params, optimizer.init(student), batch)
    start = time.perf_counter()
    compiled = jax.jit(train_step(objective, optimizer)).lower(*arguments).compile()
    memory = compiled.memory_analysis()
    parts = {
        "temp": memory.temp_size_in_bytes,
        "argument": memory.argument_size_in_bytes,
        "output": memory.output_size_in_bytes,
    }
    record = {
        "arm": name,
        "compile_seconds": time.perf_counter() - start,
        "train_flops": float(objective.train_flops(batch)),
        **{f"{part}_bytes": value for part, value in parts.items()},
        "peak_bytes": sum(parts.values()),
        "teacher_param_bytes": tree_bytes(frozen_params),
        "label_bytes": tree_bytes([batch[feature] for feature in LABELS if feature in batch]),
    }
    return {"compiled": compiled, "arguments": arguments, "record": record}


def step_arms(
    student_model: Model,
    teacher_model: Model,
    params: Mapping[str, Params],
    batches: Mapping[int, Batch],
    args: argparse.Namespace,
) -> dict[str, tuple[Objective, Params, Batch]]:
    """{arm: (objective, frozen params, batch)}: plain LM, live teacher, stored labels per k."""
    plain_batch = without_labels(next(iter(batches.values())))
    kd = lambda teacher: DistillationObjective(  # noqa: E731
        student_model, teacher=teacher, omega=args.omega, chunk_size=args.chunk_size
    )
    return {
        "plain": (DecoderObjective(student_model), {}, plain_batch),
        "live": (kd(teacher_model), {"teacher": params["teacher"]}, plain_batch),
        **{f"stored_k{k}": (kd(None), {}, batch) for k, batch in batches.items()},
    }


def time_steps(
    arms: Mapping[str, tuple[Objective, Params, Batch]], student: Params, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every arm compiled, then timed interleaved; each record with its seconds and per-round ratio to plain."""
    built = {name: compile_arm(name, *arm, student, args) for name, arm in arms.items()}
    calls = {name: lambda b=b: b["compiled"](*b["arguments"]) for name, b in built.items()}
    seconds = interleaved(calls, args.rounds, warmup=1)
    records = []
    for name, b in built.items():
        ratios = [s / p for s, p in zip(seconds[name], seconds["plain"])]
        records.append(
            b["record"]
            | {
                "seconds": seconds[name],
                "median_seconds": statistics.median(seconds[name]),
                "min_seconds": min(seconds[name]),
                "ratio_to_plain_per_round": ratios,
                "ratio_to_plain": statistics.median(ratios),
            }
        )
        print(f"{name}: {records[-1]['median_seconds']:.4f} s, {records[-1]['ratio_to_plain']:.3f}x plain", flush=True)
    return records


# ----------------------------------------------------------------------------------------------
# Quantisation.


@functools.partial(jax.jit, static_argnames=("model",))
def sparse_fkl_sum(model: Model, params: Params, batch: Batch, labels: losses.TopKLabels) -> jax.Array:
    """The weighted sum of the sparse FKL of `labels` to the model's distributions on `batch`."""
    logits = model.logits(params, batch)
    return jnp.sum(losses.sparse_divergence("fkl", logits, labels, batch[DECODER_LOSS_WEIGHTS]))


def quantisation(
    labelled: str, top_k: int, models: Mapping[str, Model], params: Mapping[str, Params], args: argparse.Namespace
) -> dict[str, Any]:
    """The store's float16 labels against the float32 `top_k_labels` of the same teacher logits, over
    every stored token, and the random student's sparse FKL under each."""
    errors: dict[str, list[np.ndarray]] = {"log_probs": [], "log_rest": [], "ids_equal": []}
    fkl = {"float16": 0.0, "float32": 0.0}
    for batch in labelled_batches(labelled, args, args.store_batch, pack=False):
        features = without_labels(batch)
        exact, _, _ = teacher_labels.batch_labels(
            models["teacher"], params["teacher"], features, top_k, args.chunk_size
        )
        stored, real = stored_teacher_labels(batch), batch[DECODER_LOSS_WEIGHTS] > 0
        errors["log_probs"].append(np.abs(np.asarray(stored.log_probs) - np.asarray(exact.log_probs))[real])
        errors["log_rest"].append(np.abs(np.asarray(stored.log_rest) - np.asarray(exact.log_rest))[real])
        errors["ids_equal"].append((np.asarray(stored.ids) == np.asarray(exact.ids))[real])
        for precision, labels in (("float16", stored), ("float32", exact)):
            fkl[precision] += float(sparse_fkl_sum(models["student"], params["student"], features, labels))
    log_probs, log_rest = np.concatenate(errors["log_probs"]), np.concatenate(errors["log_rest"])
    return {
        "top_k": top_k,
        "tokens": len(log_rest),
        "ids_equal_share": float(np.concatenate(errors["ids_equal"]).mean()),
        "log_probs_max_abs_error": float(log_probs.max()),
        "log_probs_mean_abs_error": float(log_probs.mean()),
        "log_rest_max_abs_error": float(log_rest.max()),
        "log_rest_mean_abs_error": float(log_rest.mean()),
        "fkl_float32": fkl["float32"] / len(log_rest),
        "fkl_float16": fkl["float16"] / len(log_rest),
        "fkl_relative_change": (fkl["float16"] - fkl["float32"]) / fkl["float32"],
    }


# ----------------------------------------------------------------------------------------------
# The run.


def targets(steps: list[dict[str, Any]], disk: list[dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """The issue's targets with their measured values: each stored step's ratio to the plain one, and
    the store's bytes per token at k = BYTES_K (when measured)."""
    live = next(r for r in steps if r["arm"] == "live")
    rows = [
        {
            "target": f"stored-labels KD step <= {MAX_STEP_RATIO} x plain LM step ({r['arm']})",
            "value": r["ratio_to_plain"],
            "met": r["ratio_to_plain"] <= MAX_STEP_RATIO,
            "detail": f"median of {rounds} per-round ratios (live teacher: {live['ratio_to_plain']:.3f}x)",
        }
        for r in steps
        if r["arm"].startswith("stored")
    ]
    rows += [
        {
            "target": f"store <= {MAX_BYTES_PER_TOKEN} bytes per token (k = {BYTES_K})",
            "value": r["bytes_per_token"],
            "met": r["bytes_per_token"] <= MAX_BYTES_PER_TOKEN,
            "detail": f"{r['bytes']} bytes for {r['tokens']} tokens",
        }
        for r in disk
        if r["top_k"] == BYTES_K
    ]
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and writes the JSON and Markdown reports; returns the JSON content."""
    args = parse_args(argv)
    student_config, teacher_config = salt_pair(args.bindings)
    bench = Benchmark(__file__, argv, args.out_dir, args.matmul_sizes, args.matmul_repeats)
    models = {"student": build_model(student_config), "teacher": build_model(teacher_config)}
    params = {"student": random_params(models["student"], args.length, STUDENT_SEED)}
    params["teacher"] = random_params(models["teacher"], args.length, TEACHER_SEED)
    head_task = register_head_task(args)
    with tempfile.TemporaryDirectory(prefix="bench_teacher_labels-") as root:
        stores = {
            k: build_store(head_task, models["teacher"], params["teacher"], k, args, Path(root)) for k in args.top_ks
        }
        disk = [disk_record(manifest) for manifest, _ in stores.values()]
        print("bytes/token: " + ", ".join(f"k={r['top_k']} {r['bytes_per_token']:.1f}" for r in disk), flush=True)
        step_batches = {k: next(labelled_batches(name, args, args.batch, pack=True)) for k, (_, name) in stores.items()}
        rows = {len(batch[TEACHER_LOG_REST]) for batch in step_batches.values()}
        if rows != {args.batch}:
            sys.exit(f"bench_teacher_labels: {args.store_examples} examples fill {rows} rows, not --batch {args.batch}")
        steps = time_steps(
            step_arms(models["student"], models["teacher"], params, step_batches, args), params["student"], args
        )
        bench.check()
        quantised = [quantisation(name, k, models, params, args) for k, (_, name) in stores.items()]
    report = bench.report(
        vars(args)
        | {"student_config": dataclasses.asdict(student_config), "teacher_config": dataclasses.asdict(teacher_config)},
        steps=steps,
        disk=disk,
        quantisation=quantised,
        targets=targets(steps, disk, args.rounds),
    )
    bench.write(report, markdown(report))
    return report


# ----------------------------------------------------------------------------------------------
# The report.


def _model(config: Mapping[str, Any]) -> str:
    """A decoder config in one phrase."""
    return (
        f"d_model {config['emb_dim']}, {config['num_layers']} layers, {config['num_heads']} query heads x "
        f"{config['head_dim']}, {config['num_kv_heads']} KV heads, SwiGLU {config['mlp_dim']}, vocab "
        f"{config['vocab_size']}, {config['dtype']}"
    )


def markdown(report: dict[str, Any]) -> str:
    """The report: set-up, targets, step time and memory, disk, quantisation."""
    config = report["config"]
    lines = [
        "# Stored teacher labels benchmark: SALT's KD step from a label store vs a live teacher",
        "",
        header_markdown(report),
        "",
        f"Student: {_model(config['student_config'])}. Teacher: {_model(config['teacher_config'])}. Both "
        f"randomly initialised (seeds {STUDENT_SEED} and {TEACHER_SEED}). Steps on one batch of {config['batch']} "
        f"packed rows x {config['length']} tokens of `{config['task']}` (`{config['split']}`), omega "
        f"{config['omega']}, head chunks of {config['chunk_size']} positions, Adam (lr {config['learning_rate']}). "
        f"Stores of the split's first {config['store_examples']} examples, labelled {config['store_batch']} rows "
        "at a time.",
        "",
        "## Targets",
        "",
        "| target | value | met | detail |",
        "|---|---|---|---|",
        *[
            f"| {t['target']} | {t['value']:.3f} | {'met' if t['met'] else 'missed'} | {t['detail']} |"
            for t in report["targets"]
        ],
        "",
        *_steps_table(report["steps"]),
        "",
        *_disk_table(report["disk"]),
        "",
        *_quantisation_table(report["quantisation"]),
        "",
        f"Time: every step compiled first, then one untimed round and {config['rounds']} timed rounds, the arms "
        "called in turn within a round; the ratio to the plain step is taken per round, its median reported. "
        "Memory: XLA's memory analysis of each compiled step; peak = temp + argument + output. The live step's "
        "arguments hold the teacher's parameters, the stored steps' the labels (int32 ids, float32 "
        "log-probabilities as the pipeline delivers them). Disk: the store's shard bytes over its target tokens; "
        "ids, log-probabilities and the other per-token fields (log rest, the true token's log-probability "
        "and rank, the target) are the payload, the rest is the records' framing. Quantisation: the stored "
        "float16 labels against the float32 labels of the same teacher logits, over every stored token; FKL per "
        "token of the random student.",
        "",
    ]
    return "\n".join(lines)


def _steps_table(steps: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Step time and memory",
        "",
        "| arm | median s | min s | x plain (median) | train GFLOP | compile s | temp MiB | argument MiB "
        "| output MiB | peak MiB | teacher params MiB | labels MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in steps:
        lines.append(
            f"| {r['arm']} | {r['median_seconds']:.4f} | {r['min_seconds']:.4f} | {r['ratio_to_plain']:.3f} "
            f"| {r['train_flops'] / 1e9:.2f} | {r['compile_seconds']:.1f} | {r['temp_bytes'] / MIB:.2f} "
            f"| {r['argument_bytes'] / MIB:.2f} | {r['output_bytes'] / MIB:.2f} | {r['peak_bytes'] / MIB:.2f} "
            f"| {r['teacher_param_bytes'] / MIB:.2f} | {r['label_bytes'] / MIB:.2f} |"
        )
    return lines


def _disk_table(disk: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Store on disk (bytes per token)",
        "",
        "| k | examples | tokens | MiB | bytes/token | ids | log-probs | other fields | framing | build s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in disk:
        lines.append(
            f"| {r['top_k']} | {r['examples']} | {r['tokens']} | {r['bytes'] / MIB:.2f} | {r['bytes_per_token']:.1f} "
            f"| {r['ids_bytes_per_token']} | {r['log_probs_bytes_per_token']} | {r['other_fields_bytes_per_token']} "
            f"| {r['framing_bytes_per_token']:.1f} | {r['build_seconds']:.1f} |"
        )
    return lines


def _quantisation_table(quantised: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Quantisation (float16 store vs float32 labels)",
        "",
        "| k | tokens | ids equal | log p max abs err | log p mean abs err | log rest max abs err "
        "| log rest mean abs err | FKL float32 | FKL float16 | FKL relative change |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in quantised:
        lines.append(
            f"| {r['top_k']} | {r['tokens']} | {r['ids_equal_share']:.4f} | {r['log_probs_max_abs_error']:.2e} "
            f"| {r['log_probs_mean_abs_error']:.2e} | {r['log_rest_max_abs_error']:.2e} "
            f"| {r['log_rest_mean_abs_error']:.2e} | {r['fkl_float32']:.5f} | {r['fkl_float16']:.5f} "
            f"| {r['fkl_relative_change']:.2e} |"
        )
    return lines


if __name__ == "__main__":
    main()
