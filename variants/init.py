"""Framework-neutral weight initialisation: the same seed gives the same weights in JAX and PyTorch.

Each framework asks only for its parameter names (canonical, dotted) and shapes; values come from
here, drawn per name so adding a layer does not change the others.
"""

import zlib
from collections import OrderedDict

import numpy as np

from variants.performer_features import orthogonal_features


# Building the same model in both frameworks (as `bench run` does, one after the other) would draw
# ~100M normals twice; the most recent ~1 GB of drawn arrays are kept. Arrays are never written to.
_CACHE_BYTES = 1 << 30
_cache: "OrderedDict[tuple, np.ndarray]" = OrderedDict()


def init_weight(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    key = (name, tuple(shape), seed)
    if (hit := _cache.get(key)) is not None:
        return hit
    value = _draw(name, tuple(shape), seed)
    value.flags.writeable = False
    _cache[key] = value
    while sum(a.nbytes for a in _cache.values()) > _CACHE_BYTES and len(_cache) > 1:
        _cache.popitem(last=False)
    return value


def _draw(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
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
