"""Plugin variants for the runner's tests: a tiny encoder that measures fine, and three that break the
worker measuring them (a segfault, `os._exit(3)`, a hang). They misbehave only inside a worker
(BENCH_WORKER is set), so the parent can list and plan them like any other variant."""

import os
import signal
import time

from variants import EncoderSpec, register

TINY = EncoderSpec(input_dim=12, model_dim=32, num_heads=4, ffn_dim=48, conv_kernel=4, num_blocks=2,
                   conv_only_blocks=1, left_context=5)


def _in_worker() -> bool:
    return bool(os.environ.get("BENCH_WORKER"))


@register("plugin test: a tiny encoder that measures normally")
def tiny_ok() -> EncoderSpec:
    return TINY


@register("plugin test: the same tiny encoder with a wider FFN (a slower step)")
def tiny_wide() -> EncoderSpec:
    return TINY.replace(ffn_dim=4 * TINY.ffn_dim)


@register("plugin test: building it segfaults the worker")
def tiny_segfault() -> EncoderSpec:
    if _in_worker():
        os.kill(os.getpid(), signal.SIGSEGV)
    return TINY


@register("plugin test: building it ends the worker with os._exit(3)")
def tiny_exit() -> EncoderSpec:
    if _in_worker():
        os._exit(3)
    return TINY


@register("plugin test: building it hangs the worker")
def tiny_hang() -> EncoderSpec:
    if _in_worker():
        time.sleep(3600)
    return TINY
