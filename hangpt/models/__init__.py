"""Model families in Hugging Face layout, over shared layers. Each family is one small file."""

from .gpt2 import GPT, PRESETS, GPTConfig, GPTOutput, KVCache, attention_mask_for, preset_config

__all__ = ["GPT", "GPTConfig", "GPTOutput", "KVCache", "PRESETS", "attention_mask_for", "preset_config"]
