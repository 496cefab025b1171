"""hangpt: build your own Korean-first ChatGPT, from raw text to a chat model you can align and inspect."""

__version__ = "0.1.0"
