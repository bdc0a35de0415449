"""The Performer's random projection, drawn once in numpy so both frameworks share it bit for bit."""

import numpy as np


def orthogonal_features(num_features: int, dim: int, seed: int) -> np.ndarray:
    """[num_features, dim] orthogonal Gaussian rows (FAVOR+, Choromanski et al. 2021).

    Blocks of `dim` rows come from the Q of a QR decomposition of a Gaussian matrix, so rows within
    a block are exactly orthogonal; each row is rescaled to the length of a Gaussian vector
    (chi(dim) distributed) so its marginal matches an i.i.d. Gaussian row.
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(-(-num_features // dim)):
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        blocks.append(q.T)
    rows = np.concatenate(blocks, axis=0)[:num_features]
    norms = np.linalg.norm(rng.standard_normal((num_features, dim)), axis=1, keepdims=True)
    return (rows * norms).astype(np.float32)
