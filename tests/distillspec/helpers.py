"""Helpers shared by the DistillSpec tests, decoder-only and encoder-decoder alike: sharpened random models
and noisy drafts, target-only greedy decoding, exact float64 distributions, acceptances and divergences,
chi-square tests. `inputs` are an encoder-decoder's {"encoder_input_tokens": [rows, l]} (None: decoder-only)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from distillspec import speculative
from distillspec.objective import encoder_inputs
from littlehelp import decoding

SIGNIFICANCE = 1e-4  # each distribution test's false-failure rate


def sharpened(params, head_scale: float = 4.0):
    """`params` with the output head ("logits_dense") scaled up: peaked next-token distributions."""
    scale = lambda path, x: x * head_scale if "logits_dense" in jax.tree_util.keystr(path) else x  # noqa: E731
    return jax.tree_util.tree_map_with_path(scale, params)


def noisy_copy(params, seed: int = 1, noise: float = 0.5):
    """`params` plus noise (numpy: nothing to compile): a draft that agrees with the target part of the time."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (x + noise * np.std(x) * rng.standard_normal(x.shape)).astype(x.dtype), params)


def padded(rows, width=None):
    """Ragged token lists as (right-padded tokens [n, width], lengths [n])."""
    tokens = np.zeros((len(rows), width or max(map(len, rows))), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return tokens, np.array([len(r) for r in rows], np.int32)


def target_only(target, rows, eos_id, new_tokens, inputs=None):
    """The target's own greedy continuations of `rows` (`decoding.generate`)."""
    tokens, lengths = padded(rows)
    return np.asarray(
        decoding.generate(
            target[0], target[1], tokens, lengths, new_tokens, jax.random.key(0), decoding.Sampling(), eos_id, inputs
        )
    )


def sometimes_early(free: np.ndarray) -> int:
    """A token that greedy continuations `free` [rows, n] (decoded without EOS) emit among their first 3 in
    some rows and nowhere in others: an EOS that ends some rows early and not all."""
    counts = {int(t): sum(int(t) in row for row in free) for t in free[:, :3].ravel()}
    return min((t for t, c in counts.items() if 0 < c < len(free)), key=lambda t: -counts[t])


@functools.cache
def jitted_logits(model):
    """`model.logits`, compiled once per model and shapes (calling it eagerly dispatches op by op: slow)."""
    return jax.jit(model.logits)


def distributions(model, params, contexts, temperature=1.0, top_k=0, inputs=None):
    """p(. | each prefix) [n, l, vocab] float64 of equal-length decoder contexts [n, l], in one forward pass."""
    batch = {"decoder_input_tokens": jnp.asarray(contexts), **(inputs or {})}
    logits = np.asarray(jitted_logits(model)(params, batch), np.float64) / temperature
    if top_k:
        logits = np.where(logits < np.sort(logits, axis=-1)[..., -top_k : -top_k + 1], -np.inf, logits)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def two_token_distributions(model, params, prompt, inputs=None, **filters):
    """(p(x1) [vocab], p(x2 | x1) [vocab, vocab]) after `prompt` (and one row of `inputs`), from one forward pass
    of prompt + x1 for every x1."""
    vocab = model.config.vocab_size
    contexts = np.array([prompt + [x] for x in range(vocab)])
    repeated = {name: np.repeat(value, vocab, axis=0) for name, value in (inputs or {}).items()}
    probs = distributions(model, params, contexts, inputs=repeated, **filters)
    return probs[0, -2], probs[:, -1]


def sampled_first_two(target, draft, prompts, temperature, gamma, acceptance=speculative.exact_acceptance, inputs=None):
    """The first two tokens [rows, 2] speculative sampling draws after each of `prompts` (seed 7)."""
    tokens, lengths = padded(prompts)
    plan = speculative.Plan(gamma, 2, decoding.Sampling(temperature), None, acceptance)
    out, _, _ = speculative.decode(target[0], target[1], draft[0], draft[1], tokens, lengths, 7, plan, inputs)
    return np.asarray(out)


def chi_square_p_value(draws: np.ndarray, joint: np.ndarray) -> float:
    """p-value of observed token tuples [n, k] against their joint distribution [vocab] * k; cells expecting < 5
    pooled, cells of probability 0 (filtered out: top-k) must be empty."""
    counts = np.bincount(np.ravel_multi_index(tuple(draws.T), joint.shape), minlength=joint.size)
    possible = joint.ravel() > 0
    assert counts[~possible].sum() == 0, "a draw the distribution cannot make"
    counts, expected = counts[possible], joint.ravel()[possible] * len(draws)
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    if not (~big).any():  # nothing pooled: no empty pooled cell
        observed, expected = observed[:-1], expected[:-1]
    return float(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


def two_position_acceptance(p, q, overlap=np.minimum) -> tuple[float, float]:
    """Exact acceptance of proposals 1 and 2 from the target's and the draft's (first [vocab], second
    [vocab, vocab]) distributions: position 1 accepts with beta = sum overlap(p, q) (min(p, q): 1 - TVD);
    position 2, reached after accepting x ~ overlap(p, q) / beta, with the mean of beta given x."""
    (p1, p2), (q1, q2) = p, q
    accepted1 = overlap(p1, q1)
    beta1 = accepted1.sum()
    return beta1, (accepted1 * overlap(p2, q2).sum(-1)).sum() / beta1


def assert_acceptance_matches(stats_, expected, rows: int) -> None:
    """Measured per-position acceptances (`SpeculativeStats`) within 4.5 binomial standard deviations of
    `expected`, position 2 judged as often as position 1 accepted."""
    reached = (rows, rows * stats_.per_position_acceptance[0])
    for measured, exact, n in zip(stats_.per_position_acceptance, expected, reached):
        assert abs(measured - exact) < 4.5 * np.sqrt(exact * (1 - exact) / n)


# ------------------------------------------------------------------------------------------------
# The distillation objective's float64 reference.


def numpy_divergence(kind: str, q_logits, p_logits, temperature: float, beta: float) -> np.ndarray:
    """Per-token divergence [b, l] in float64 from logits [b, l, vocab] (docs/concepts/losses.md)."""

    def log_softmax(x):
        x = np.asarray(x, np.float64) / temperature
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    log_q, log_p = log_softmax(q_logits), log_softmax(p_logits)
    q, p = np.exp(log_q), np.exp(log_p)
    kl = lambda a, log_a, log_b: (a * (log_a - log_b)).sum(-1)  # noqa: E731
    if kind == "fkl":
        return kl(p, log_p, log_q)
    if kind == "rkl":
        return kl(q, log_q, log_p)
    if kind == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    log_m = np.log(beta * p + (1 - beta) * q)
    return beta * kl(p, log_p, log_m) + (1 - beta) * kl(q, log_q, log_m)


def numpy_average(values, weights, average: str) -> tuple[float, float]:
    """(mean, denominator) of per-token values [b, g] in float64: over the weighted tokens ("token"), or each
    row's plain mean over its tokens of nonzero weight, averaged over the rows that have any with each row's
    weight as its count ("sequence"; a row carries one weight on all its tokens)."""
    values, weights = np.asarray(values, np.float64), np.asarray(weights, np.float64)
    if average == "token":
        return float((values * weights).sum() / weights.sum()), float(weights.sum())
    rows = [r for r in range(len(weights)) if weights[r].any()]
    counts = np.array([weights[r].max() for r in rows])
    means = np.array([values[r][weights[r] > 0].mean() for r in rows])
    return float((counts * means).sum() / counts.sum()), float(counts.sum())


def reference_loss(
    models,
    params,
    scored,
    weights,
    prompt_length: int,
    kind: str = "fkl",
    temperature: float = 1.0,
    beta: float = 0.5,
    average: str = "sequence",
) -> float:
    """The averaged divergence over the continuation of `scored` (decoder inputs, and an encoder-decoder's
    encoder inputs), from both models' full (unchunked) logits; `models` and `params` under "model" (the
    draft) and "target"."""
    batch = {name: jnp.asarray(value) for name, value in scored.items()}
    q, p = (
        np.asarray(jitted_logits(models[key])(params[key], batch))[:, prompt_length:] for key in ("model", "target")
    )
    return numpy_average(numpy_divergence(kind, q, p, temperature, beta), weights, average)[0]


def sampled_inputs(model, params, batch, key, prompt_length: int, generated: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt + `decoding.generate`'s continuation as decoder inputs, and the continuation."""
    prompt = jnp.asarray(batch["decoder_input_tokens"][:, : prompt_length + 1])
    lengths = jnp.full((prompt.shape[0],), prompt_length + 1, jnp.int32)
    tokens = np.asarray(
        decoding.generate(
            model,
            params,
            prompt,
            lengths,
            generated,
            key,
            decoding.Sampling(1.0),
            eos_id=-1,
            inputs=encoder_inputs(batch) or None,
        )
    )
    return np.concatenate([np.asarray(prompt), tokens[:, :-1]], axis=1), tokens


def row_weights(batch, prompt_length: int, generated: int) -> np.ndarray:
    """Each row's weight (its last prompt token's; with no prompt, its first target token's) on every sampled
    token."""
    weights = np.asarray(batch["decoder_loss_weights"]) * np.asarray(batch.get("example_weights", 1.0))
    position = max(prompt_length - 1, 0)
    return np.broadcast_to(weights[:, position : position + 1], (len(weights), generated))
