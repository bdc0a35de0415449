"""Benchmark harness for streaming speech encoders: measure a (variant, framework, device, batch) and report it.

`bench.runner.run` measures a plan in worker processes (`bench.worker`), each driving `bench.measure`;
framework code lives only in `bench.adapters`, imported when a measurement needs it, so importing
`bench` stays instant.
"""
