"""Framework-neutral weight initialisation: the same seed gives the same weights in JAX and PyTorch.

Each framework asks only for its parameter names (canonical, dotted) and shapes; values come from
here, drawn per name so adding a layer does not change the others.
"""

import zlib

import numpy as np

from variants.performer_features import orthogonal_features


def init_weight(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "features":  # Performer projection [m, head_dim]: orthogonal Gaussian rows
        return orthogonal_features(shape[0], shape[1], int(rng.integers(2**31)))
    if leaf == "scale":
        return np.ones(shape, np.float32)
    if leaf in ("bias", "rel_bias", "depthwise_bias"):
        return np.zeros(shape, np.float32)
    fan_in = shape[0]  # kernels are [in, out]; the depthwise kernel [K, d] has fan-in K
    return (rng.standard_normal(shape, np.float32) / np.sqrt(fan_in)).astype(np.float32)
