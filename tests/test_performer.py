"""FAVOR+ in both frameworks: three forms agree, the stabilizer is causal, the kernel approximates softmax."""

import numpy as np
import pytest

from variants.performer_features import orthogonal_features

B, T, H, DH = 2, 24, 3, 16


def _inputs(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((B, T, H, DH)).astype(np.float32) * scale for _ in range(3))
    return q * DH ** -0.25, k * DH ** -0.25, v


def _jax_forms(q, k, v, proj, kernel):
    import jax.numpy as jnp

    from variants import jax_model as m

    pq = m.favor_features(jnp.asarray(q), jnp.asarray(proj), kernel, True)
    pk = m.favor_features(jnp.asarray(k), jnp.asarray(proj), kernel, False)
    v = jnp.asarray(v)
    s = jnp.zeros((B, H, proj.shape[0], DH))
    z = jnp.zeros((B, H, proj.shape[0]))
    steps = []
    for t in range(T):  # the recurrence, one frame at a time
        y, s, z = m.favor_step(pq[:, t:t + 1], pk[:, t:t + 1], v[:, t:t + 1], s, z)
        steps.append(y)
    return (np.asarray(jnp.concatenate(steps, 1)), np.asarray(m.favor_prefix_sum(pq, pk, v)),
            np.asarray(m.favor_quadratic(pq, pk, v)))


def _torch_forms(q, k, v, proj, kernel):
    import torch

    from variants import torch_model as m

    q, k, v, proj = (torch.from_numpy(a) for a in (q, k, v, proj))
    pq, pk = m.favor_features(q, proj, kernel, True), m.favor_features(k, proj, kernel, False)
    s, z = torch.zeros(B, H, proj.shape[0], DH), torch.zeros(B, H, proj.shape[0])
    steps = []
    for t in range(0, T, 5):  # the recurrence over chunks of 5 (last one partial)
        y, s, z = m.favor_step(pq[:, t:t + 5], pk[:, t:t + 5], v[:, t:t + 5], s, z)
        steps.append(y)
    return (torch.cat(steps, 1).numpy(), m.favor_prefix_sum(pq, pk, v).numpy(), m.favor_quadratic(pq, pk, v).numpy())


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("forms", [_jax_forms, _torch_forms])
def test_recurrent_prefix_sum_and_quadratic_forms_agree(forms, kernel):
    proj = orthogonal_features(32, DH, seed=0)
    recurrent, prefix, quadratic = forms(*_inputs(), proj, kernel)
    np.testing.assert_allclose(prefix, quadratic, atol=1e-4, rtol=0)
    np.testing.assert_allclose(recurrent, quadratic, atol=1e-4, rtol=0)


def test_jax_and_torch_features_agree():
    proj = orthogonal_features(32, DH, seed=1)
    q, k, v = _inputs(1)
    for a, b in zip(_jax_forms(q, k, v, proj, "softmax"), _torch_forms(q, k, v, proj, "softmax")):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_output_does_not_depend_on_the_future():
    """A causal stabilizer: outputs up to t are unchanged when later keys grow huge."""
    proj = orthogonal_features(32, DH, seed=0)
    q, k, v = _inputs()
    k_future = k.copy()
    k_future[:, T // 2:] *= 6.0
    before = _jax_forms(q, k, v, proj, "softmax")[1][:, : T // 2]
    after = _jax_forms(q, k_future, v, proj, "softmax")[1][:, : T // 2]
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)


def test_orthogonal_features_are_orthogonal_within_a_block():
    w = orthogonal_features(40, DH, seed=3)
    assert w.shape == (40, DH)
    block = w[:DH] / np.linalg.norm(w[:DH], axis=1, keepdims=True)
    np.testing.assert_allclose(block @ block.T, np.eye(DH), atol=1e-5)


def _exact_causal_softmax(q, k, v):
    scores = np.einsum("bthd,bshd->bhts", q, k)  # q, k already carry dh^-1/4 each
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", probs, v)


def test_approximation_error_falls_with_more_features():
    from variants import jax_model as m

    errors = {}
    for num_features in (16, 256):
        per_seed = []
        for seed in range(4):
            q, k, v = _inputs(seed, scale=0.5)
            proj = orthogonal_features(num_features, DH, seed=100 + seed)
            pq = m.favor_features(q, proj, "softmax", True)
            pk = m.favor_features(k, proj, "softmax", False)
            approx = np.asarray(m.favor_prefix_sum(pq, pk, v))
            per_seed.append(np.mean(np.abs(approx - _exact_causal_softmax(q, k, v))))
        errors[num_features] = float(np.mean(per_seed))
    assert errors[256] < 0.5 * errors[16], errors
