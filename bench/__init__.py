"""Benchmarks (``python -m bench``); litellm is kept offline for all of them."""

from runner.call.setup import configure

configure()
