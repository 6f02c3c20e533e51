"""The SoftSRV study's data and declarations: each domain's split keeps held-out examples apart from the
training ones, the shared data draw is the same every time (the real examples drawn from the training
split), a method left out of the run gives no values, and the claims compare SS_MLP with few-shot,
each fine-tune claim checking that the references differ."""

import json

from littlehelp import study
from softsrv import reproduction

STUDY = reproduction.STUDY


def context_of(tmp_path, arm, **settings):
    return study.ArmContext(STUDY, STUDY.arm(arm), 0, {**STUDY.settings, **settings}, tmp_path)


def read(path):
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def test_humaneval_holds_out_every_fifth_prompt():
    train, held_out = reproduction.humaneval("train"), reproduction.humaneval("validation")
    assert (len(train), len(held_out)) == (131, 33) and not set(train) & set(held_out)


def test_speeches_and_functions_keep_their_lengths_and_their_splits_apart():
    train, held_out = reproduction.speeches("train"), reproduction.speeches("validation")
    assert train and held_out and not set(train) & set(held_out)
    assert all(100 <= len(t) <= 500 for t in train + held_out)
    functions = reproduction.code_functions("validation")
    assert functions and all(120 <= len(f) <= 600 and f.lstrip().startswith(("def ", "async def ", "@")) for f in functions)


def test_the_shared_data_are_the_same_draw_every_time(tmp_path):
    sizes = {"domains": ["humaneval"], "train_examples": 20, "eval_examples": 6, "num_samples": 5}
    files = {}
    for run in ("first", "second"):
        context = context_of(tmp_path / run, "data", **sizes)
        reproduction.write_data(context)
        files[run] = {name: read(reproduction.data_file(context, "humaneval", name)) for name in ("train", "eval", "real")}
    assert files["first"] == files["second"]
    drawn = files["first"]
    assert [len(drawn[n]) for n in ("train", "eval", "real")] == [20, 6, 5]
    assert set(drawn["real"]) <= set(reproduction.humaneval("train")) and not set(drawn["eval"]) & set(drawn["real"])


def test_a_method_left_out_of_the_run_gives_no_values(tmp_path):
    assert reproduction.run_method(context_of(tmp_path, "nsp", methods=["mlp"]), "nsp") == {"values": {}}


def test_the_claims_compare_ss_mlp_with_few_shot_on_every_domain():
    assert {(c.arm, c.baseline) for c in STUDY.claims} == {("mlp", "few_shot")}
    assert sorted(c.metric for c in STUDY.claims) == sorted(f"{k}_{d}" for d in reproduction.DOMAINS for k in ("mauve", "nll"))
    assert all((c.separation == ("real", "untuned")) == c.metric.startswith("nll") for c in STUDY.claims)
    mauve = {m.name: m for m in STUDY.metrics}["mauve_code"]
    assert [a.name for a in STUDY.measured_arms(mauve)] == list(reproduction.METHODS)
