"""Readers for the real data formats, token shards and batching."""
