"""Benchmarks (``python -m bench``); litellm is kept offline for all of them."""

from runner.provider.setup import configure

configure()
