"""Text generation: KV-cache decoding with every strategy transformers and the OpenAI API offer.

    from hangpt.engine import Engine, GenerationConfig
    engine = Engine(ckpt.model, ckpt.tokenizer)
    engine.generate(["오늘 날씨가"], GenerationConfig(max_new_tokens=20))[0][0].text
"""

from .config import Completion, GenerationConfig, StreamEvent


def __getattr__(name):
    """Engine (and torch) load on first use, so the CLI reads GenerationConfig's fields without them."""
    if name == "Engine":
        from .core import Engine

        return Engine
    raise AttributeError(name)

__all__ = ["Completion", "Engine", "GenerationConfig", "StreamEvent"]
