"""The SoftSRV study's data and declarations: each domain's training, validation and test splits are
disjoint (the held-out modules, plays and prompts apart from the training ones), the shared data draw
is the same every time (the real examples are the first training examples), the domain instruction
reaches the domain and few-shot prompts and the generic one the generic prompt, a method left out of
the run gives no values, and the claims compare SS_MLP with each hard prompt, each fine-tune claim
checking that the references differ."""

import json

import pytest

from littlehelp import study
from softsrv import generate, reproduction, synthesis

STUDY = reproduction.STUDY


def context_of(tmp_path, arm, **settings):
    return study.ArmContext(STUDY, STUDY.arm(arm), 0, {**STUDY.settings, **settings}, tmp_path)


def read(path):
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def test_humaneval_splits_are_disjoint_and_cover_every_prompt():
    splits = [reproduction.humaneval(split) for split in reproduction.SPLITS]
    assert [len(s) for s in splits] == [82, 41, 41] and len(set().union(*map(set, splits))) == 164


def test_speeches_and_functions_keep_their_lengths_and_their_splits_apart():
    train, validation, test = (reproduction.speech_split(split) for split in reproduction.SPLITS)
    assert (
        train
        and validation
        and test
        and not (set(train) & set(validation) or set(train) & set(test) or set(validation) & set(test))
    )
    assert all(100 <= len(t) <= 500 for t in train + validation + test)
    validation, test = reproduction.code_split("validation"), reproduction.code_split("test")
    assert validation and test and not set(validation) & set(test)
    assert all(120 <= len(f) <= 600 and f.lstrip().startswith(("def ", "async def ", "@")) for f in validation + test)


def test_the_shared_data_are_the_same_draw_every_time(tmp_path):
    sizes = {
        "domains": ["humaneval"],
        "train_examples": 20,
        "validation_examples": 6,
        "test_examples": 5,
        "num_samples": 4,
    }
    files = {}
    for run in ("first", "second"):
        context = context_of(tmp_path / run, "data", **sizes)
        reproduction.write_data(context)
        files[run] = {
            name: read(reproduction.data_file(context, "humaneval", name)) for name in (*reproduction.SPLITS, "real")
        }
    assert files["first"] == files["second"]
    drawn = files["first"]
    assert [len(drawn[n]) for n in (*reproduction.SPLITS, "real")] == [20, 6, 5, 4]
    assert drawn["real"] == drawn["train"][:4] and set(drawn["train"]) <= set(reproduction.humaneval("train"))
    assert not set(drawn["train"]) & set(drawn["validation"]) and not set(drawn["train"]) & set(drawn["test"])


def test_the_domain_instruction_reaches_the_domain_and_few_shot_prompts(tmp_path):
    context = context_of(
        tmp_path, "data", domains=["humaneval"], train_examples=8, validation_examples=4, test_examples=4, num_samples=4
    )
    reproduction.write_data(context)
    written = reproduction.INSTRUCTIONS["humaneval"]
    train = read(reproduction.data_file(context, "humaneval", "train"))
    for arm, instruction in (
        ("zero_shot", generate.GENERIC_INSTRUCTION),
        ("domain_prompt", written),
        ("few_shot", written),
    ):
        method, given = reproduction.hard_prompt(context.replace(arm), arm, "humaneval")
        prompts = synthesis.hard_prompts(method, train, 3, reproduction.SHOTS, 0, given)
        assert all(p.startswith(instruction + "\n\n") for p in prompts)
        assert all(p.count("Example:\n") == (reproduction.SHOTS + 1 if arm == "few_shot" else 0) for p in prompts)


def test_a_method_left_out_of_the_run_gives_no_values(tmp_path):
    assert reproduction.run_method(context_of(tmp_path, "few_shot", methods=["mlp"]), "few_shot") == {"values": {}}


def test_the_claims_compare_ss_mlp_with_each_hard_prompt_on_every_domain():
    hard = set(reproduction.HARD_PROMPTS)
    assert {(c.arm, c.baseline) for c in STUDY.claims} == {("mlp", h) for h in hard}
    assert sorted((c.metric, c.baseline) for c in STUDY.claims) == sorted(
        (f"{k}_{d}", h) for d in reproduction.DOMAINS for k in ("mauve", "nll") for h in hard
    )
    assert all((c.separation == ("real", "untuned")) == c.metric.startswith("nll") for c in STUDY.claims)
    mauve = {m.name: m for m in STUDY.metrics}["mauve_code"]
    assert [a.name for a in STUDY.measured_arms(mauve)] == list(reproduction.METHODS)
    assert STUDY.settings["num_samples"] >= 128 and STUDY.settings["finetune_seeds"] >= 3


def test_the_prompt_loss_curves_are_the_training_losss_running_mean_and_the_held_out_loss(tmp_path):
    context = context_of(tmp_path, "mlp")
    assert reproduction.prompt_loss(context, "code", held_out=False) == ([], [])  # no prompt trained there
    run = context.folder / "code" / "run"
    run.mkdir(parents=True)
    records = [{"step": s, "train/loss": float(s)} for s in range(1, 13)] + [{"step": 10, "eval/loss": 0.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    steps, means = reproduction.prompt_loss(context, "code", held_out=False)
    assert steps == [10, 11, 12] and means == pytest.approx([5.5, 6.5, 7.5])  # (1 + ... + 10) / 10, then on by one
    assert reproduction.prompt_loss(context, "code", held_out=True) == ([10], [0.5])
