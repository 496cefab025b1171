"""Text generation: KV-cache decoding with every strategy transformers and the OpenAI API offer.

    from hangpt.engine import Engine, GenerationConfig
    engine = Engine(ckpt.model, ckpt.tokenizer)
    engine.generate(["오늘 날씨가"], GenerationConfig(max_new_tokens=20))[0][0].text
"""

from .config import Completion, GenerationConfig, StreamEvent
from .core import Engine

__all__ = ["Completion", "Engine", "GenerationConfig", "StreamEvent"]
