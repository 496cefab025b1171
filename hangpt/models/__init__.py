"""Model families in Hugging Face layout, over shared layers (layers.py). Each family is one small
file; this module maps config.json's `model_type` to the family and builds models from presets."""

from __future__ import annotations

import dataclasses

from ..errors import InputError
from . import gpt2, llama
from .gpt2 import GPT, GPTConfig
from .gpt_neox import GPTNeoX, GPTNeoXConfig
from .gptj import GPTJ, GPTJConfig
from .layers import CausalLM, KVCache, ModelOutput, attention_mask_for
from .llama import Llama, LlamaConfig

# model_type -> (config class, model class)
FAMILIES = {
    "gpt2": (GPTConfig, GPT),
    **{name: (LlamaConfig, Llama) for name in llama.MODEL_TYPES},
    "gptj": (GPTJConfig, GPTJ),
    "gpt_neox": (GPTNeoXConfig, GPTNeoX),
}
# --arch -> the presets of that architecture
ARCHITECTURES = {"gpt2": gpt2.PRESETS, "llama": llama.PRESETS}


def config_from_hf(d: dict):
    """The family config for a config.json dict; an unknown model_type names the supported ones."""
    if not isinstance(d, dict):
        raise InputError("config.json: not a JSON object")
    model_type = d.get("model_type", "gpt2")
    if model_type not in FAMILIES:
        raise InputError(f"config.json: model_type {model_type!r} is not supported "
                         f"(supported: {', '.join(FAMILIES)})")
    config_class = FAMILIES[model_type][0]
    _check_types(d, config_class)
    return config_class.from_hf_dict(d)


def _check_types(d: dict, config_class) -> None:
    """A config.json number of the wrong type (a string width, a list) named here, not deep inside
    the model as a TypeError."""
    number = {"int": lambda v: isinstance(v, int), "float": lambda v: isinstance(v, (int, float))}
    for f in dataclasses.fields(config_class):
        kind = f.type.removesuffix(" | None")
        if f.name not in d or kind not in number or (d[f.name] is None and f.type.endswith("None")):
            continue
        if isinstance(d[f.name], bool) or not number[kind](d[f.name]):
            raise InputError(f"config.json: {f.name} must be {'an integer' if kind == 'int' else 'a number'}, "
                             f"not {d[f.name]!r}")


def build_model(config) -> CausalLM:
    """A randomly initialised model of the config's family."""
    return FAMILIES[config.model_type][1](config)


def preset_config(name: str, arch: str = "gpt2", **overrides):
    """The config of a named preset (`tiny`, `small`, ...) of an architecture (`gpt2`, `llama`)."""
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    presets = ARCHITECTURES[arch]
    if name not in presets:
        raise InputError(f"unknown preset {name!r} for --arch {arch}; choose one of {', '.join(presets)}")
    config_class = GPTConfig if arch == "gpt2" else LlamaConfig
    return config_class(**{**presets[name], **overrides})


__all__ = ["ARCHITECTURES", "FAMILIES", "GPT", "GPTConfig", "GPTJ", "GPTJConfig", "GPTNeoX", "GPTNeoXConfig",
           "CausalLM", "KVCache", "Llama", "LlamaConfig",
           "ModelOutput", "attention_mask_for", "build_model", "config_from_hf", "preset_config"]
