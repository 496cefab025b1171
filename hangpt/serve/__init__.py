"""Serving: the OpenAI-compatible API and web playground (app.py), request batching over the
engine (batcher.py), and the store of human rankings collected in the playground (feedback.py)."""
