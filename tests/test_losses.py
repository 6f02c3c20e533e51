"""Losses against float64 numpy references: cross-entropy with z-loss per token and summed, per-sequence
reductions, the divergences FKL / RKL / JSD[beta] / TVD (values, gradients, refusals), and the chunked
hidden-state + head versions (equal to the unchunked ones, with no [b, l, V] buffer)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from littlehelp import losses


def _logsumexp(x):
    top = x.max(-1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(-1, keepdims=True)))[..., 0]


def _log_softmax(logits, temperature=1.0):
    x = np.asarray(logits, np.float64) / temperature
    return x - _logsumexp(x)[..., None]


def np_divergence(kind, student, teacher, weights, beta=0.5, temperature=1.0):
    """float64 reference of the divergences (docs/concepts/losses.md) with p the teacher, q the student."""
    log_q, log_p = _log_softmax(student, temperature), _log_softmax(teacher, temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    if kind == "fkl":
        values = (p * (log_p - log_q)).sum(-1)
    elif kind == "rkl":
        values = (q * (log_q - log_p)).sum(-1)
    elif kind == "jsd":
        log_m = np.log(beta * p + (1 - beta) * q)
        values = beta * (p * (log_p - log_m)).sum(-1) + (1 - beta) * (q * (log_q - log_m)).sum(-1)
    else:
        values = 0.5 * np.abs(p - q).sum(-1)
    return values * weights


def _pair(shape=(3, 5, 11), scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    student, teacher = rng.normal(size=shape) * scale, rng.normal(size=shape) * scale
    weights = (rng.random(shape[:-1]) > 0.3).astype(np.float64)
    return student, teacher, weights


def _f32(*arrays):
    return [jnp.asarray(a, jnp.float32) for a in arrays]


# ----------------------------------------------------------------------------------------------
# Cross-entropy.


def test_cross_entropy_and_z_loss_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)) * 3
    targets = rng.integers(0, 11, size=(3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float64)
    sums = losses.cross_entropy_with_z_loss(
        jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(weights), z_loss=1e-2
    )
    log_z = np.log(np.exp(logits).sum(-1))
    nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(sums.cross_entropy, (nll * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums.z_loss, (1e-2 * log_z**2 * weights).sum(), rtol=1e-5)
    np.testing.assert_allclose(sums.correct, ((logits.argmax(-1) == targets) * weights).sum())
    np.testing.assert_allclose(sums.weight, weights.sum())


def test_zero_z_loss_is_exactly_zero():
    sums = losses.cross_entropy_with_z_loss(jnp.ones((2, 3, 4)), jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3)))
    assert float(sums.z_loss) == 0.0
    np.testing.assert_allclose(sums.cross_entropy, 6 * np.log(4), rtol=1e-6)


def test_per_token_cross_entropy_and_sequence_reductions_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 6, 9)) * 2
    targets = rng.integers(0, 9, size=(3, 6))
    weights = (rng.random((3, 6)) > 0.4).astype(np.float64)
    weights[2] = 0.0  # an all-padding sequence
    token = losses.token_cross_entropy(
        jnp.asarray(logits, jnp.bfloat16), jnp.asarray(targets), jnp.asarray(weights), 1e-3
    )
    bf16_logits = np.asarray(jnp.asarray(logits, jnp.bfloat16), np.float64)
    log_z = _logsumexp(bf16_logits)
    nll = (log_z - np.take_along_axis(bf16_logits, targets[..., None], -1)[..., 0]) * weights
    assert token.cross_entropy.shape == (3, 6) and token.cross_entropy.dtype == jnp.float32
    np.testing.assert_allclose(token.cross_entropy, nll, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(token.z_loss, 1e-3 * log_z**2 * weights, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(losses.sequence_sum(token.cross_entropy), nll.sum(-1), rtol=1e-5)
    mean = losses.sequence_mean(token.cross_entropy, jnp.asarray(weights))
    np.testing.assert_allclose(mean[:2], nll[:2].sum(-1) / weights[:2].sum(-1), rtol=1e-5)
    assert float(mean[2]) == 0.0


# ----------------------------------------------------------------------------------------------
# Divergences.


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_divergences_match_float64_numpy_per_token(kind, temperature):
    student, teacher, weights = _pair()
    values = losses.divergence(kind, *_f32(student, teacher, weights), temperature=temperature)
    assert values.shape == (3, 5) and values.dtype == jnp.float32
    np.testing.assert_allclose(
        values, np_divergence(kind, student, teacher, weights, 0.5, temperature), rtol=2e-5, atol=1e-6
    )


def test_individual_functions_equal_the_public_entry():
    student, teacher, weights = _f32(*_pair())
    functions = {"fkl": losses.forward_kl, "rkl": losses.reverse_kl, "tvd": losses.total_variation}
    for kind, function in functions.items():
        np.testing.assert_array_equal(
            function(student, teacher, weights, 1.5),
            losses.divergence(kind, student, teacher, weights, temperature=1.5),
        )
    np.testing.assert_array_equal(
        losses.jensen_shannon(student, teacher, weights, 0.3, 1.5),
        losses.divergence("jsd", student, teacher, weights, beta=0.3, temperature=1.5),
    )


@pytest.mark.parametrize("beta", [1e-3, 0.2, 0.5, 0.9, 1 - 1e-3])
def test_jsd_matches_float64_formula_and_is_bounded_for_every_beta(beta):
    student, teacher, weights = _pair()
    values = losses.jensen_shannon(*_f32(student, teacher, weights), beta=beta)
    np.testing.assert_allclose(values, np_divergence("jsd", student, teacher, weights, beta), rtol=5e-6, atol=1e-9)
    entropy_of_beta = -beta * np.log(beta) - (1 - beta) * np.log1p(-beta)  # JSD[beta] <= H(beta)
    assert (np.asarray(values) >= 0).all() and (np.asarray(values) <= entropy_of_beta + 1e-6).all()


def test_jsd_scaled_by_beta_tends_to_fkl_and_rkl_at_the_ends():
    student, teacher, weights = _pair(scale=1.0)
    fkl = np_divergence("fkl", student, teacher, weights)
    rkl = np_divergence("rkl", student, teacher, weights)
    near_zero = np.asarray(losses.jensen_shannon(*_f32(student, teacher, weights), beta=1e-3)) / 1e-3
    near_one = np.asarray(losses.jensen_shannon(*_f32(student, teacher, weights), beta=1 - 1e-3)) / 1e-3
    np.testing.assert_allclose(near_zero, fkl, rtol=1e-2, atol=1e-6)
    np.testing.assert_allclose(near_one, rkl, rtol=1e-2, atol=1e-6)
    # Away from the ends the scaled value is clearly not FKL: the check above can tell them apart.
    middle = np.asarray(losses.jensen_shannon(*_f32(student, teacher, weights), beta=0.5)) / 0.5
    assert np.abs(middle - fkl)[weights > 0].min() > 0.05 * fkl[weights > 0].min()


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_bfloat16_logits_are_computed_in_float32(kind):
    student, teacher, weights = _pair()
    student16, teacher16 = jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16)
    values = losses.divergence(kind, student16, teacher16, jnp.asarray(weights), beta=0.3, temperature=1.3)
    assert values.dtype == jnp.float32
    reference = np_divergence(
        kind, np.asarray(student16, np.float64), np.asarray(teacher16, np.float64), weights, 0.3, 1.3
    )
    np.testing.assert_allclose(values, reference, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_non_negative_and_zero_for_equal_distributions(kind):
    student, teacher, _ = _pair(shape=(4, 6, 64), scale=20.0)
    ones = np.ones((4, 6))
    assert (np.asarray(losses.divergence(kind, *_f32(student, teacher, ones), beta=0.01)) >= 0).all()
    # Equal distributions: identical logits, and logits that differ by a constant per token.
    same = losses.divergence(kind, *_f32(student, student + 7.0, ones), beta=0.3)
    np.testing.assert_allclose(same, 0.0, atol=2e-6)
    assert (np.asarray(same) >= 0).all()


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_weights_mask_and_scale_tokens(kind):
    student, teacher, _ = _pair()
    weights = np.zeros((3, 5))
    weights[0, 1], weights[2, 4] = 1.0, 2.5
    student[1] *= 1e4  # extreme logits on fully masked rows change nothing
    values = np.asarray(losses.divergence(kind, *_f32(student, teacher, weights)))
    full = np.asarray(losses.divergence(kind, *_f32(student, teacher, np.ones((3, 5)))))
    assert (values[weights == 0] == 0).all()
    np.testing.assert_allclose(values[0, 1], full[0, 1], rtol=1e-6)
    np.testing.assert_allclose(values[2, 4], 2.5 * full[2, 4], rtol=1e-6)


def test_refusals_name_the_argument_and_the_alternative():
    student, teacher, weights = _f32(*_pair())
    with pytest.raises(ValueError, match=r"0 < beta < 1, got beta=0.*identically zero.*'fkl'"):
        losses.divergence("jsd", student, teacher, weights, beta=0.0)
    with pytest.raises(ValueError, match=r"0 < beta < 1, got beta=1.*identically zero.*'rkl'"):
        losses.jensen_shannon(student, teacher, weights, beta=1.0)
    with pytest.raises(ValueError, match="unknown divergence kind 'kl'; expected one of fkl, rkl, jsd, tvd"):
        losses.divergence("kl", student, teacher, weights)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        losses.divergence("fkl", student, teacher, weights, temperature=0)


def _finite_difference(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_gradients_wrt_student_logits_match_float64_finite_differences(kind):
    student, teacher, weights = _pair(shape=(2, 3, 7), scale=1.5, seed=3)
    reference = _finite_difference(lambda s: np_divergence(kind, s, teacher, weights, 0.3, 1.7).sum(), student)

    def loss(s, t):
        return losses.divergence(kind, s, t, jnp.asarray(weights, jnp.float32), beta=0.3, temperature=1.7).sum()

    student_grad, teacher_grad = jax.grad(loss, argnums=(0, 1))(*_f32(student, teacher))
    np.testing.assert_allclose(student_grad, reference, rtol=1e-3, atol=1e-6)
    assert float(jnp.abs(teacher_grad).max()) == 0.0  # the teacher is frozen


def test_forward_kl_gradient_is_the_analytic_form():
    student, teacher, weights = _pair(shape=(2, 3, 7), seed=4)
    grad = jax.grad(lambda s: losses.forward_kl(s, *_f32(teacher, weights), temperature=2.0).sum())(_f32(student)[0])
    q, p = np.exp(_log_softmax(student, 2.0)), np.exp(_log_softmax(teacher, 2.0))
    np.testing.assert_allclose(grad, (q - p) / 2.0 * weights[..., None], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Chunked from hidden states + head.


def _models(b=2, length=13, d=8, d_teacher=12, vocab=50, seed=5):
    rng = np.random.default_rng(seed)
    hidden, teacher_hidden = rng.normal(size=(b, length, d)), rng.normal(size=(b, length, d_teacher))
    params = {"kernel": rng.normal(size=(d, vocab)) / 2, "bias": rng.normal(size=(vocab,))}
    teacher_kernel = rng.normal(size=(d_teacher, vocab)) / 2
    weights = (rng.random((b, length)) > 0.2).astype(np.float32)
    targets = rng.integers(0, vocab, (b, length))
    as_jax = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)  # noqa: E731
    return as_jax((hidden, params, teacher_hidden, teacher_kernel, weights)) + (jnp.asarray(targets),)


def _head(params):
    return lambda h: h @ params["kernel"] + params["bias"]


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [4, 13, 64])  # 13 = 4 chunks padded to 16; 64 > length
def test_chunked_divergence_values_and_gradients_equal_unchunked(kind, chunk_size):
    hidden, params, teacher_hidden, teacher_kernel, weights, _ = _models()

    def unchunked(h, p, th, tk):
        return losses.divergence(kind, _head(p)(h), th @ tk, weights, beta=0.3, temperature=1.5).sum()

    def chunked(h, p, th, tk):
        return losses.chunked_divergence(
            kind, h, _head(p), th, lambda x: x @ tk, weights, chunk_size, beta=0.3, temperature=1.5
        ).total

    args = (hidden, params, teacher_hidden, teacher_kernel)
    value, grads = jax.value_and_grad(unchunked, argnums=(0, 1))(*args)
    chunked_value, chunked_grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2, 3)))(*args)
    np.testing.assert_allclose(chunked_value, value, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(chunked_grads[:2]), jax.tree.leaves(grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in chunked_grads[2:])  # frozen teacher
    per_token = losses.chunked_divergence(
        kind,
        hidden,
        _head(params),
        teacher_hidden,
        lambda x: x @ teacher_kernel,
        weights,
        chunk_size,
        beta=0.3,
        temperature=1.5,
    ).per_token
    np.testing.assert_allclose(
        per_token,
        losses.divergence(
            kind, _head(params)(hidden), teacher_hidden @ teacher_kernel, weights, beta=0.3, temperature=1.5
        ),
        rtol=1e-5,
        atol=1e-7,
    )


def test_chunked_cross_entropy_values_gradients_and_metrics_equal_unchunked():
    hidden, params, _, _, weights, targets = _models()
    sums = losses.cross_entropy_with_z_loss(_head(params)(hidden), targets, weights, 1e-2)

    def unchunked(h, p):
        s = losses.cross_entropy_with_z_loss(_head(p)(h), targets, weights, 1e-2)
        return s.cross_entropy + s.z_loss

    chunked = lambda h, p: losses.chunked_cross_entropy(h, _head(p), targets, weights, 1e-2, chunk_size=5).total  # noqa: E731
    value, grads = jax.value_and_grad(unchunked, argnums=(0, 1))(hidden, params)
    chunked_value, chunked_grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))(hidden, params)
    np.testing.assert_allclose(chunked_value, value, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(chunked_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    result = losses.chunked_cross_entropy(hidden, _head(params), targets, weights, 1e-2, chunk_size=5)
    assert result.per_token.cross_entropy.shape == (2, 13)
    chunked_sums = losses.token_sums(result.per_token, weights)
    for field in ("cross_entropy", "z_loss", "correct", "weight"):
        np.testing.assert_allclose(getattr(chunked_sums, field), getattr(sums, field), rtol=1e-5)


def test_chunked_bfloat16_model_gives_bfloat16_gradients_close_to_float32():
    hidden, params, teacher_hidden, teacher_kernel, weights, _ = _models(length=40)
    to16 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree)  # noqa: E731

    def chunked(h, p):
        return losses.chunked_divergence(
            "fkl", h, _head(p), teacher_hidden, lambda x: x @ teacher_kernel, weights, chunk_size=4
        ).total

    def unchunked(h, p):
        return losses.forward_kl(_head(p)(h), teacher_hidden @ teacher_kernel, weights).sum()

    grads16 = jax.grad(chunked, argnums=(0, 1))(*to16((hidden, params)))
    grads32 = jax.grad(unchunked, argnums=(0, 1))(
        *jax.tree.map(lambda x: x.astype(jnp.float32), to16((hidden, params)))
    )
    for got, want in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=3e-2, atol=3e-2 * float(jnp.abs(want).max()))


def test_chunked_per_token_values_carry_no_gradient_and_bad_chunk_size_is_refused():
    hidden, params, _, _, weights, targets = _models()
    grad = jax.grad(
        lambda h: losses.chunked_cross_entropy(h, _head(params), targets, weights).per_token.cross_entropy.sum()
    )(hidden)
    assert float(jnp.abs(grad).max()) == 0.0
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        losses.chunked_cross_entropy(hidden, _head(params), targets, weights, chunk_size=0)


def test_compiled_chunked_loss_and_grad_holds_no_batch_length_vocab_buffer():
    b, length, d, vocab = 4, 1024, 32, 4096
    full_logits_bytes = b * length * vocab * 4  # 64 MiB
    spec = jax.ShapeDtypeStruct
    args = (
        spec((b, length, d), jnp.float32),
        spec((d, vocab), jnp.float32),
        spec((b, length, 2 * d), jnp.float32),
        spec((2 * d, vocab), jnp.float32),
        spec((b, length), jnp.float32),
    )

    def temp_bytes(loss):
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    naive = temp_bytes(lambda h, k, th, tk, w: losses.divergence("jsd", h @ k, th @ tk, w).sum())
    chunked = temp_bytes(
        lambda h, k, th, tk, w: (
            losses.chunked_divergence("jsd", h, lambda x: x @ k, th, lambda x: x @ tk, w, chunk_size=16).total
        )
    )
    assert naive > full_logits_bytes  # the check can see such a buffer
    assert chunked < full_logits_bytes / 6


# ----------------------------------------------------------------------------------------------
# Stored top-k teacher labels.


def np_buckets(log_probs, ids):
    """float64 reference: log-probabilities [..., k + 1] of the top-k ids, then of the rest merged."""
    top = np.take_along_axis(log_probs, ids, axis=-1)
    rest = 1.0 - np.exp(top).sum(-1)
    return np.concatenate([top, np.log(np.maximum(rest, 1e-300))[..., None]], axis=-1)


@pytest.mark.parametrize("k", [1, 4, 11])
def test_top_k_labels_are_the_teachers_top_k_and_its_remaining_mass(k):
    _, teacher, _ = _pair()
    labels = losses.top_k_labels(jnp.asarray(teacher, jnp.float32), k, temperature=2.0)
    log_p = _log_softmax(teacher, 2.0)
    expected_ids = np.argsort(-log_p, axis=-1)[..., :k]
    np.testing.assert_array_equal(np.asarray(labels.ids), expected_ids)
    np.testing.assert_allclose(labels.log_probs, np.take_along_axis(log_p, expected_ids, -1), atol=1e-5)
    expected_rest = np_buckets(log_p, expected_ids)[..., -1]
    if k < 11:
        np.testing.assert_allclose(labels.log_rest, expected_rest, rtol=1e-4)
    else:
        assert np.all(np.asarray(labels.log_rest) == losses.EMPTY_BUCKET)


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_sparse_divergence_with_every_token_stored_is_the_dense_one_and_so_is_its_gradient(kind):
    student, teacher, weights = _f32(*_pair())
    labels = losses.top_k_labels(teacher, 11)
    sparse = losses.sparse_divergence(kind, student, labels, weights, beta=0.3)
    dense = losses.divergence(kind, student, teacher, weights, beta=0.3)
    np.testing.assert_allclose(sparse, dense, atol=1e-5)
    grad_sparse = jax.grad(lambda s: losses.sparse_divergence(kind, s, labels, weights, beta=0.3).sum())(student)
    grad_dense = jax.grad(lambda s: losses.divergence(kind, s, teacher, weights, beta=0.3).sum())(student)
    assert np.all(np.isfinite(grad_sparse))
    np.testing.assert_allclose(grad_sparse, grad_dense, atol=1e-5)


@pytest.mark.parametrize("kind", losses.DIVERGENCES)
def test_sparse_divergence_is_the_divergence_of_the_bucketed_distributions(kind):
    student, teacher, weights = _pair(seed=1)
    k, temperature = 4, 1.5
    labels = losses.top_k_labels(jnp.asarray(teacher, jnp.float32), k)
    ids = np.asarray(labels.ids)
    log_p = np_buckets(_log_softmax(teacher), ids)
    log_q = np_buckets(_log_softmax(student, temperature), ids)
    expected = np_divergence(kind, log_q, log_p, weights, beta=0.3)  # buckets as logits: log_softmax keeps them
    got = losses.sparse_divergence(kind, *_f32(student), labels, *_f32(weights), beta=0.3, temperature=temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    full = np_divergence(kind, student / temperature, teacher, weights, beta=0.3)
    assert np.all(np.asarray(got) <= full + 1e-5)  # merging outcomes never increases an f-divergence


def test_sparse_divergence_gradient_matches_finite_differences():
    student, teacher, weights = _pair(shape=(2, 3, 7), seed=2)
    labels = losses.top_k_labels(jnp.asarray(teacher, jnp.float32), 3)
    ids = np.asarray(labels.ids)
    log_p = np_buckets(_log_softmax(teacher), ids)

    def reference(s):
        return np_divergence("fkl", np_buckets(_log_softmax(s), ids), log_p, weights).sum()

    grad = jax.grad(lambda s: losses.sparse_divergence("fkl", s, labels, *_f32(weights)).sum())(*_f32(student))
    step, numeric = 1e-6, np.zeros_like(student)
    for index in np.ndindex(student.shape):
        bumped = student.copy()
        bumped[index] += step
        numeric[index] = (reference(bumped) - reference(student)) / step
    np.testing.assert_allclose(grad, numeric, atol=1e-3)


def test_chunked_stored_labels_loss_with_every_token_stored_equals_the_live_teachers_and_so_do_gradients():
    hidden, params, teacher_hidden, teacher_kernel, weights, targets = _models()
    mix = jnp.linspace(0.0, 1.0, 13)[None, :] * jnp.ones((2, 1))  # a per-token share, 0 .. 1
    live = lambda h, p: losses.chunked_labels_and_divergence(  # noqa: E731
        "fkl", h, _head(p), teacher_hidden, lambda x: x @ teacher_kernel, targets, weights, mix, 1e-2, 4
    )
    labels = losses.top_k_labels(teacher_hidden @ teacher_kernel, 50)  # k = vocab: every token stored
    stored = lambda h, p: losses.chunked_labels_and_stored_divergence(  # noqa: E731
        "fkl", h, _head(p), labels, targets, weights, mix, 1e-2, 4
    )
    value, grads = jax.value_and_grad(lambda h, p: live(h, p).total, argnums=(0, 1))(hidden, params)
    got, got_grads = jax.jit(jax.value_and_grad(lambda h, p: stored(h, p).total, argnums=(0, 1)))(hidden, params)
    np.testing.assert_allclose(got, value, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    (hard, soft), (live_hard, live_soft) = stored(hidden, params).per_token, live(hidden, params).per_token
    np.testing.assert_allclose(soft, live_soft, atol=1e-5)
    np.testing.assert_allclose(hard.cross_entropy, live_hard.cross_entropy, rtol=1e-6)
