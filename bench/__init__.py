"""Benchmark harness for streaming speech encoders: measure a (variant, framework, device, batch) and report it.

`bench.measure.measure` is the one entry point of the measurement core; framework code lives only in
`bench.adapters`, imported when a measurement needs it, so importing `bench` stays instant.
"""
