"""Framework-neutral weight initialisation: the same seed gives the same weights in JAX and PyTorch.

Each framework asks only for its parameter names (canonical, dotted) and shapes; values come from
here, drawn per name so adding a layer does not change the others.
"""

import zlib
from collections import OrderedDict

import numpy as np

from variants.performer_features import orthogonal_features


# Building the same model in both frameworks (as `bench run` does, one after the other) would draw
# ~100M weights twice; the most recent ~1 GB of drawn arrays are kept. Arrays are never written to.
_CACHE_BYTES = 1 << 30
_cache: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
_cached_bytes = 0


def initial_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Canonical name -> the array `seed` draws for it; what both frameworks' encoders start from."""
    return {name: init_weight(name, tuple(shape), seed) for name, shape in shapes.items()}


def init_weight(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    global _cached_bytes
    key = (name, tuple(shape), seed)
    if (hit := _cache.get(key)) is not None:
        return hit
    value = _draw(name, tuple(shape), seed)
    value.flags.writeable = False
    _cache[key] = value
    _cached_bytes += value.nbytes
    while _cached_bytes > _CACHE_BYTES and len(_cache) > 1:
        _cached_bytes -= _cache.popitem(last=False)[1].nbytes
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
    # LeCun uniform: variance 1/fan_in, drawn uniform rather than normal because a full-size model
    # has ~100M weights and each worker draws its own (0.3 s instead of 1.5 s on the reference VM)
    fan_in = shape[0]  # kernels are [in, out]; the depthwise kernel [K, d] has fan-in K
    limit = np.float32(np.sqrt(3.0 / fan_in))
    value = rng.random(shape, np.float32)
    value *= np.float32(2.0) * limit  # in place, in float32: float64 temporaries would cost more than the draw
    value -= limit
    return value


def check_weights(expected_shapes: dict[str, tuple[int, ...]], weights: dict[str, np.ndarray]) -> None:
    """Raise a ValueError unless `weights` has exactly the expected canonical names and shapes.

    Both frameworks' `load_weights` call this before changing anything, so a bad dict loads nothing."""
    if missing := set(expected_shapes) - set(weights):
        raise ValueError(f"load_weights: missing {sorted(missing)[:5]} ({len(missing)} in all)")
    if extra := set(weights) - set(expected_shapes):
        raise ValueError(f"load_weights: unexpected {sorted(extra)[:5]} ({len(extra)} in all)")
    for name, shape in expected_shapes.items():
        if tuple(weights[name].shape) != tuple(shape):
            raise ValueError(f"load_weights: {name} has shape {weights[name].shape}, expected {tuple(shape)}")
