"""Speculative decoding checked against target-only decoding, exact float64 distributions and chi-square
tests. Models are tiny random DecoderLMs with sharpened output heads; the draft is a noisy copy of the
target (so proposals are sometimes accepted, sometimes not)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from distillspec import speculative
from littlehelp import decoding
from littlehelp.models import DecoderConfig, build_model
from tests.distillspec.helpers import (
    SIGNIFICANCE,
    assert_acceptance_matches,
    chi_square_p_value,
    noisy_copy,
    padded,
    sampled_first_two,
    sharpened,
    sometimes_early,
    target_only,
    two_position_acceptance,
    two_token_distributions,
)

VOCAB = 32
MODEL = build_model(
    DecoderConfig(
        vocab_size=VOCAB,
        emb_dim=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        mlp_dim=32,
        scan_layers=False,
    )
)
PROMPTS = [[3, 4, 5], [6], [7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18], [19, 20, 21, 22, 23, 24], [25, 26]]
NEW_TOKENS = 12
ROWS = 4096  # identical prompts with different randomness for the distribution tests


def random_params(model, seed: int):
    """Random params with the output head scaled up (peaked next-token distributions)."""
    return sharpened(nn.unbox(model.init(jax.random.key(seed), {"decoder_input_tokens": jnp.ones((1, 4), jnp.int32)})))


@pytest.fixture(scope="module")
def target():
    return MODEL, random_params(MODEL, 0)


@pytest.fixture(scope="module")
def draft(target):
    """The target's params plus noise: a draft that agrees with the target part of the time."""
    return MODEL, noisy_copy(target[1])


@pytest.fixture(scope="module")
def eos_id(target):
    """A token target-only greedy decoding emits early in some rows and not at all in others."""
    return sometimes_early(target_only(target, PROMPTS, -1, NEW_TOKENS))


@pytest.mark.parametrize("gamma", range(1, 9))
def test_greedy_equals_target_only_decoding_in_a_batch(gamma, target, draft, eos_id):
    expected = target_only(target, PROMPTS, eos_id, NEW_TOKENS)
    ends = (expected == eos_id).any(axis=1)
    assert ends.any() and not ends.all()  # some rows stop early at EOS, some run to the end
    batch = speculative.generate(target, draft, PROMPTS, gamma=gamma, max_new_tokens=NEW_TOKENS, eos_id=eos_id)
    np.testing.assert_array_equal(batch.tokens, expected)
    np.testing.assert_array_equal(batch.lengths, (expected != 0).sum(axis=1))
    assert 0 < batch.stats.acceptance_rate < 1


# Each row alone compiles its own decode (its cache is sized by its length), so three gammas: the
# shortest round, one that straddles EOS in some rows, and one longer than most rows' accepted runs.
@pytest.mark.parametrize("gamma", [1, 3, 8])
def test_each_row_alone_decodes_and_accepts_as_it_does_in_the_batch(gamma, target, draft, eos_id):
    expected = target_only(target, PROMPTS, eos_id, NEW_TOKENS)
    batch = speculative.generate(target, draft, PROMPTS, gamma=gamma, max_new_tokens=NEW_TOKENS, eos_id=eos_id)
    tokens, lengths = padded(PROMPTS)
    alone = [
        speculative.generate(
            target,
            draft,
            tokens[i : i + 1],
            prompt_lengths=lengths[i : i + 1],
            gamma=gamma,
            max_new_tokens=NEW_TOKENS,
            eos_id=eos_id,
        )
        for i in range(len(PROMPTS))
    ]
    np.testing.assert_array_equal(np.concatenate([a.tokens for a in alone]), expected)
    # Per-row state: the batch accepts exactly what the rows accept alone.
    alone_accepted = sum(a.stats.mean_accepted_length * a.stats.rounds for a in alone)
    rows_rounds = sum(a.stats.rounds for a in alone)
    assert batch.stats.mean_accepted_length * rows_rounds == pytest.approx(alone_accepted)


def test_a_draft_equal_to_the_target_is_always_accepted(target, eos_id):
    out = speculative.generate(target, target, PROMPTS, gamma=3, max_new_tokens=NEW_TOKENS, eos_id=eos_id)
    np.testing.assert_array_equal(out.tokens, target_only(target, PROMPTS, eos_id, NEW_TOKENS))
    assert out.stats.acceptance_rate == 1.0 and out.stats.per_position_acceptance == (1.0, 1.0, 1.0)
    assert out.stats.block_efficiency == 4.0 and out.stats.rounds == NEW_TOKENS // 4
    assert out.stats.target_calls == 1 + NEW_TOKENS // 4 and out.stats.draft_calls == 1 + 3 * NEW_TOKENS // 4


# ------------------------------------------------------------------------------------------------
# Exact distributions in float64 from full (cache-free) forward passes.


PROMPT = [3, 4, 5]


@pytest.mark.parametrize("temperature, gamma", [(1.0, 1), (0.7, 2)])
def test_speculative_sampling_follows_the_target_distribution(temperature, gamma, target, draft):
    first, second = two_token_distributions(*target, PROMPT, temperature=temperature)
    joint = first[:, None] * second
    sampled = sampled_first_two(target, draft, [PROMPT] * ROWS, temperature, gamma)
    assert chi_square_p_value(sampled, joint) > SIGNIFICANCE
    # The draft alone is far from the target: the test can tell the two apart.
    q_first, q_second = two_token_distributions(*draft, PROMPT, temperature=temperature)
    assert 0.5 * np.abs(q_first[:, None] * q_second - joint).sum() > 0.1


@pytest.mark.parametrize(
    "broken", [lambda p, q: jnp.ones_like(p), lambda p, q: jnp.minimum(1.0, q / p)], ids=["always_accept", "q_over_p"]
)
def test_a_broken_acceptance_rule_fails_the_same_test(broken, target, draft):
    first, second = two_token_distributions(*target, PROMPT)
    sampled = sampled_first_two(target, draft, [PROMPT] * ROWS, 1.0, 1, broken)
    assert chi_square_p_value(sampled, first[:, None] * second) < SIGNIFICANCE


def test_rows_do_not_depend_on_the_other_rows(target, draft):
    prompts = [PROMPT] * ROWS
    changed = [PROMPT if i % 2 else [9, 10] for i in range(ROWS)]
    base = sampled_first_two(target, draft, prompts, 0.7, 2)
    other = sampled_first_two(target, draft, changed, 0.7, 2)  # the same shapes: padded to 3
    np.testing.assert_array_equal(base[1::2], other[1::2])
    assert (base[::2] != other[::2]).any()


@pytest.mark.parametrize("lenience", [None, ("p/eps", 0.3), ("p^eps", 0.5)])
def test_acceptance_per_position_equals_one_minus_tvd(lenience, target, draft):
    """One round (max_new_tokens 1) at temperature 1, top-k 12. Exact: position 1 accepts with
    beta(prompt) = sum min(p, q); position 2, reached after accepting x ~ min(p, q) / beta, with the mean
    of beta(prompt + x). Lossy: min(p, q) becomes min(f(p), q) (the accepted draft tokens' mass)."""
    top_k = 12
    overlap = np.minimum
    if lenience is not None:  # q min(1, f(p) / q) = min(q, f(p))
        relax = {"p/eps": lambda p, eps: p / eps, "p^eps": lambda p, eps: p**eps}[lenience[0]]
        overlap = lambda p, q: np.minimum(q, relax(p, lenience[1]))  # noqa: E731
    expected = two_position_acceptance(
        two_token_distributions(*target, PROMPT, top_k=top_k),
        two_token_distributions(*draft, PROMPT, top_k=top_k),
        overlap,
    )
    out = speculative.generate(
        target,
        draft,
        [PROMPT] * ROWS,
        gamma=2,
        max_new_tokens=1,
        temperature=1.0,
        top_k=top_k,
        seed=3,
        lenience=lenience,
    )
    assert out.stats.rounds == 1
    assert_acceptance_matches(out.stats, expected, ROWS)
    assert 0.1 < expected[0] < 0.95  # neither trivial nor hopeless


def test_verify_resamples_a_rejection_from_the_residual_and_adds_a_bonus():
    """verify on fixed distributions: token frequencies against norm(max(0, p - q)) and p."""
    rows, p, q = 20000, jnp.array([0.5, 0.3, 0.2]), jnp.array([0.2, 0.2, 0.6])
    p3, q2 = jnp.tile(p, (rows, 2, 1)), jnp.tile(q, (rows, 1, 1))
    proposals = jnp.full((rows, 1), 2)  # q(2) = 0.6 > p(2) = 0.2: accepted with probability 1/3
    accepted, token = speculative.verify(p3, q2, proposals, speculative.row_keys(0, rows))
    accepted, token = np.asarray(accepted[:, 0]), np.asarray(token)
    assert abs(accepted.mean() - 1 / 3) < 4.5 * np.sqrt(2 / 9 / rows)
    residual = np.array([0.3, 0.1, 0.0]) / 0.4
    for chosen, expected in ((token[~accepted], residual), (token[accepted], np.asarray(p))):
        observed = np.bincount(chosen, minlength=3)
        keep = expected > 0
        assert observed[~keep].sum() == 0
        expected = expected[keep] / expected[keep].sum() * observed.sum()
        assert stats.chisquare(observed[keep], expected).pvalue > SIGNIFICANCE


def test_lenience_accepts_more_and_one_is_exact():
    p, q = jnp.array([0.1, 0.5]), jnp.array([0.4, 0.5])
    np.testing.assert_allclose(speculative.Lenience("p/eps", 1.0)(p, q), speculative.exact_acceptance(p, q))
    np.testing.assert_allclose(speculative.Lenience("p/eps", 0.5)(p, q), [0.5, 1.0])
    np.testing.assert_allclose(speculative.Lenience("p/eps^2", 0.5)(p, q), [1.0, 1.0])
    np.testing.assert_allclose(speculative.Lenience("p^eps", 0.5)(p, q), [np.sqrt(0.1) / 0.4, 1.0], rtol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(gamma=0), "gamma (draft tokens per round) must be >= 1, got 0"),
        (dict(draft="small"), "target vocabulary size 32 differs from the draft's 48"),
        (dict(lenience=("p/2", 0.5)), "lenience kind 'p/2' is not one of p/eps, p/eps^2, p^eps"),
        (dict(lenience=("p^eps", 1.5)), "lenience eps must be in (0, 1], got 1.5"),
        (dict(prompts=[[3], []]), "every prompt needs at least one token"),
    ],
)
def test_bad_input_is_refused_in_one_line(call, message, target):
    other = build_model(
        DecoderConfig(vocab_size=48, emb_dim=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8, mlp_dim=16)
    )
    arguments = dict(target=target, draft=target, prompts=[[3]], gamma=2, max_new_tokens=2) | call
    if arguments["draft"] == "small":
        arguments["draft"] = (other, {})  # refused before its parameters are read
    with pytest.raises(speculative.SpeculativeError) as refused:
        speculative.generate(**arguments)
    assert str(refused.value) == message


def test_the_target_and_the_draft_context_lengths_both_apply(target, draft, monkeypatch):
    """A 3-token prompt padded to 6 plus 5 new tokens fits an 8-token context (caches are sized from the prompt,
    not its padding) and decodes as the target alone; 6 new tokens are refused, naming the model, before any
    cache exists."""
    limited = build_model(dataclasses.replace(MODEL.config, context_length=8))
    short_target, short_draft = (limited, target[1]), (limited, draft[1])
    prompts, lengths = padded([[3, 4, 5]], width=6)
    ask = functools.partial(speculative.generate, prompts=prompts, prompt_lengths=lengths, gamma=3, eos_id=-1)
    with monkeypatch.context() as patched:
        patched.setattr(type(MODEL), "init_cache", lambda *args, **kwargs: pytest.fail("a cache was allocated"))
        for pair, short in [((target, short_draft), "draft"), ((short_target, draft), "target")]:
            with pytest.raises(decoding.ContextLengthError) as refused:
                ask(*pair, max_new_tokens=6)
            assert str(refused.value) == (
                f"prompt of 3 tokens + 6 new tokens = 9 exceeds the {short}'s context length "
                "of 8 tokens; shorten the prompt or ask for fewer new tokens"
            )
    out = ask(short_target, short_draft, max_new_tokens=5)
    np.testing.assert_array_equal(out.tokens, target_only(target, [[3, 4, 5]], -1, 5))


# ------------------------------------------------------------------------------------------------
# The command line: run folders in, one line out for bad input.


def tiny_config(vocab_size, context_length=2048):
    return DecoderConfig(
        vocab_size=vocab_size,
        emb_dim=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        mlp_dim=32,
        context_length=context_length,
    )


def write_folder(folder, vocab_size, seed, vocabulary=None, context_length=2048):
    """A random tiny decoder written as a converted run folder (model.gin + checkpoints [+ vocabulary])."""
    from littlehelp.models.convert import Pretrained, run_folder

    config = tiny_config(vocab_size, context_length)
    model = build_model(config)
    params = jax.tree.map(np.asarray, random_params(model, seed))
    return run_folder.write_run_folder(Pretrained("llama", config, model, params, vocabulary, "random"), folder)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """Run folders of a vocabulary-32 target and a vocabulary-48 draft."""
    root = tmp_path_factory.mktemp("folders")
    return write_folder(root / "target", VOCAB, 0), write_folder(root / "small", 48, 1)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--gamma=0"], "gamma (draft tokens per round) must be >= 1, got 0"),
        (["--lenience=p/eps", "--eps=0"], "lenience eps must be in (0, 1], got 0.0"),
        ([], "{draft} does not exist"),
        (["--draft={small}"], "target vocabulary size 32 differs from the draft's 48"),
        (["--prompt="], "--prompt is empty"),  # refused before the (missing) draft is looked at
    ],
)
def test_the_cli_refuses_bad_input_in_one_line(flags, message, tiny_folders, capsys):
    from distillspec import generate as cli

    target, small = tiny_folders
    names = {"draft": target.parent / "missing", "small": small}
    argv = [
        f"--target={target}",
        f"--draft={names['draft']}",
        "--prompt=hello",
        *(flag.format(**names) for flag in flags),
    ]
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip() == f"distillspec.generate: error: {message.format(**names)}"


def test_the_cli_decodes_a_prompt_as_the_target_alone_does(smollm2_gguf, tmp_path, capsys):
    from distillspec import generate as cli
    from littlehelp.data.hf_vocab import TokenizerVocabulary

    vocabulary = TokenizerVocabulary.from_gguf(smollm2_gguf)
    prompt = "The capital of France is"
    context = len(vocabulary.encode(prompt)) + 6  # the prompt and 6 new tokens fit exactly
    target = write_folder(tmp_path / "target", vocabulary.vocab_size, 0, vocabulary, context_length=context)
    draft = write_folder(tmp_path / "draft", vocabulary.vocab_size, 1, vocabulary)
    argv = [f"--target={target}", f"--draft={draft}", f"--prompt={prompt}", "--gamma=3"]
    with pytest.raises(SystemExit):
        cli.main([*argv, "--max_new_tokens=7"])
    assert capsys.readouterr().err.strip() == (
        f"distillspec.generate: error: prompt of {context - 6} tokens + 7 new tokens = {context + 1} exceeds the "
        f"target's context length of {context} tokens; shorten the prompt or ask for fewer new tokens"
    )
    result = cli.main([*argv, "--max_new_tokens=6", "--baseline"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"continuation: {vocabulary.decode(result['tokens'])!r}"
    assert printed[1].startswith("speculative: 6 tokens in ") and printed[2].endswith("tokens identical")
    assert result["tokens"] == result["baseline"]["tokens"] and len(result["tokens"]) == 6


WORDS = ["<pad>", "<eos>", "<unk>", *(f"w{i}" for i in range(3, VOCAB))]


def word_vocabulary(words):
    """A word-level vocabulary of `words` in id order (0 padding, 1 EOS, 2 unknown)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from littlehelp.data.hf_vocab import TokenizerVocabulary

    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return TokenizerVocabulary(tokenizer, {"eos_token": "<eos>", "unk_token": "<unk>"})


def model_folder(folder, vocabulary=None, context_length=2048, gin_lines=()):
    """A converted run folder's model.gin (the model's bindings + `gin_lines`) and vocabulary/, without
    parameters: all that is read before the parameters."""
    from littlehelp.models.convert import run_folder

    folder.mkdir()
    model = [
        "import littlehelp.models.decoder",
        "MODEL_CONFIG = @decoder.DecoderConfig()",
        *run_folder.gin_bindings(tiny_config(VOCAB, context_length)),
        "include 'models/decoder_only.gin'",
    ]
    (folder / run_folder.MODEL_GIN).write_text("\n".join([*model, *gin_lines]) + "\n")
    if vocabulary is not None:
        vocabulary.save_tokenizer_json(folder / run_folder.VOCABULARY_DIR / "tokenizer.json")
    return folder


@pytest.fixture()
def word_folders(tmp_path):
    """A 32-word target; drafts: `swapped` (two pieces swapped: the same size), `short` (an 8-token context),
    `bare` (no vocabulary), `gin_swapped` (no vocabulary/, its gin's VOCABULARY the swapped one's) and
    `gin_text` (its gin's VOCABULARY a string)."""
    swapped = model_folder(tmp_path / "swapped", word_vocabulary([*WORDS[:3], WORDS[4], WORDS[3], *WORDS[5:]]))
    return {
        "target": model_folder(tmp_path / "target", word_vocabulary(WORDS)),
        "swapped": swapped,
        "short": model_folder(tmp_path / "short", word_vocabulary(WORDS), context_length=8),
        "bare": model_folder(tmp_path / "bare"),
        "gin_swapped": model_folder(
            tmp_path / "gin_swapped",
            gin_lines=[
                "import littlehelp.models.convert.run_folder",
                "VOCABULARY = @convert.folder_vocabulary()",
                f"convert.folder_vocabulary.model_dir = '{swapped}'",
            ],
        ),
        "gin_text": model_folder(tmp_path / "gin_text", gin_lines=["VOCABULARY = 'words'"]),
    }


@pytest.mark.parametrize(
    "target, draft, message",
    [
        (
            "target",
            "swapped",
            "draft {draft} and target {target} have different vocabularies (the same 32 ids, other "
            "pieces); the draft must share the target's tokenizer",
        ),
        (
            "target",
            "gin_swapped",
            "draft {draft} and target {target} have different vocabularies (the same 32 ids, other "
            "pieces); the draft must share the target's tokenizer",
        ),
        (
            "target",
            "bare",
            "draft {draft} holds no vocabulary (no vocabulary/ folder, no VOCABULARY in its gin file) "
            "to compare with the target's",
        ),
        (
            "target",
            "gin_text",
            "draft {draft}'s vocabulary is a str, whose pieces cannot be compared (a TokenizerVocabulary's can)",
        ),
        (
            "target",
            "short",
            "prompt of 3 tokens + 6 new tokens = 9 exceeds the draft's context length of 8 tokens; "
            "shorten the prompt or ask for fewer new tokens",
        ),
        (
            "short",
            "target",
            "prompt of 3 tokens + 6 new tokens = 9 exceeds the target's context length of 8 tokens; "
            "shorten the prompt or ask for fewer new tokens",
        ),
    ],
)
def test_the_cli_refuses_another_vocabulary_or_a_long_prompt_before_reading_parameters(
    target, draft, message, word_folders, monkeypatch, capsys
):
    """Equal vocabulary sizes are not enough: the pieces are compared (a run folder's vocabulary/, or the
    VOCABULARY its gin file binds, as a training run's config.gin does); a prompt too long for either
    model's context is refused from the models' configs. Both before any parameters are read."""
    from distillspec import generate as cli
    from littlehelp import runs

    monkeypatch.setattr(
        runs.RunFolder, "load", lambda run, *_: pytest.fail(f"the parameters of {run.folder} were read")
    )
    monkeypatch.setattr(runs, "read_params", lambda folder, *_: pytest.fail(f"the parameters of {folder} were read"))
    names = {"target": word_folders[target], "draft": word_folders[draft]}
    with pytest.raises(SystemExit):
        cli.main(
            [f"--target={names['target']}", f"--draft={names['draft']}", "--prompt=w3 w4 w5", "--max_new_tokens=6"]
        )
    assert capsys.readouterr().err.strip() == f"distillspec.generate: error: {message.format(**names)}"
