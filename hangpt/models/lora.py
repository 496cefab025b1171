"""LoRA (Hu et al., 2021) on the linear layers of every family, with PEFT's semantics and names.

A target layer W (nn.Linear, or GPT-2's Conv1D whose weight is stored (in, out), PEFT's
fan_in_fan_out) keeps its frozen weight and gains a low-rank path:

    y = W x + scaling * B(A(dropout(x))),   scaling = alpha / r   (alpha / sqrt(r) with rsLoRA)

A (r, in) starts kaiming-uniform and B (out, r) at zero, so a fresh adapter leaves the model
unchanged. The adapter's tensors are named as PEFT writes them to adapter_model.safetensors,
`base_model.model.<module path>.lora_A.weight`, and the module paths are the families' Hugging Face
names, so `peft.PeftModel.from_pretrained` loads what hangpt trains and the other way round.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gpt2 import Conv1D

PEFT_PREFIX = "base_model.model."

# PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for the families hangpt has
DEFAULT_TARGETS = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
}
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer but the output head


class LoRALinear(nn.Module):
    """A frozen linear layer plus its low-rank update (PEFT's lora.Linear with one adapter)."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, use_rslora: bool = False):
        super().__init__()
        self.base = base
        self.fan_in_fan_out = isinstance(base, Conv1D)
        n_in, n_out = base.weight.shape if self.fan_in_fan_out else base.weight.shape[::-1]
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.disabled = False  # see adapters_disabled
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        # fp32 whatever the base's dtype: these are the weights that train
        self.lora_A = nn.Linear(n_in, r, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(r, n_out, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return self.base(x)
        h = F.dropout(x, self.dropout, training=True) if self.training and self.dropout > 0 else x
        update = self.lora_B(self.lora_A(h.to(self.lora_A.weight.dtype)))
        # scaled and added into the base's fresh output: no (batch, tokens, out) temporaries
        return self.base(x).add_(update.to(x.dtype), alpha=self.scaling)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A in the base weight's own layout ((in, out) for Conv1D)."""
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        return delta.T if self.fan_in_fan_out else delta


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def model_type(model: nn.Module) -> str:
    return getattr(model.config, "model_type", "gpt2")


def target_names(model: nn.Module, targets: list[str] | str | None) -> list[str]:
    """Paths of the modules `targets` selects, matched as PEFT matches target_modules: a list
    matches a module whose path is a name or ends with "." + name, a string is a regular
    expression on the whole path, "all-linear" is every linear layer but lm_head."""
    from ..errors import InputError

    if targets is None:
        kind = model_type(model)
        if kind not in DEFAULT_TARGETS:
            raise InputError(f"no default LoRA target modules for model_type {kind!r}; give --lora-targets")
        targets = DEFAULT_TARGETS[kind]
    names = []
    for name, module in model.named_modules():
        if targets == ALL_LINEAR:
            hit = is_linear(module) and module is not model.lm_head  # GPT-NeoX's head is embed_out
        elif isinstance(targets, str):
            hit = re.fullmatch(targets, name) is not None
        else:
            hit = any(name == t or name.endswith("." + t) for t in targets)
        if not hit:
            continue
        if not is_linear(module):
            raise InputError(f"LoRA target {name} is a {type(module).__name__}, not a linear layer")
        names.append(name)
    if not names:
        raise InputError(f"LoRA targets {targets} match no layer of this {model_type(model)} model")
    return names


def add_lora(model: nn.Module, r: int, alpha: float | None = None, dropout: float = 0.0,
             targets: list[str] | str | None = None, use_rslora: bool = False) -> list[nn.Parameter]:
    """Freeze every weight of `model`, wrap the target layers in LoRALinear; returns the adapter
    parameters (the only ones that train). alpha defaults to 2 r (updates scaled by 2)."""
    from ..errors import InputError

    if r < 1:
        raise InputError(f"--lora-r {r}: must be a positive integer")
    alpha = 2 * r if alpha is None else alpha
    names = target_names(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = []
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        layer = LoRALinear(getattr(owner, attr), r, alpha, dropout, use_rslora)
        setattr(owner, attr, layer)
        trainable += [layer.lora_A.weight, layer.lora_B.weight]
    return trainable


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


@contextmanager
def adapters_disabled(model: nn.Module):
    """The model with every adapter switched off (PEFT's `disable_adapter()`): the frozen base
    itself, so DPO and PPO use it as their reference model instead of holding a second copy."""
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What PEFT saves: each adapter's A and B, plus every other weight that trains (e.g. an
    embedding grown for new tokens: PEFT's modules_to_save), all under PEFT's names, fp32."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[PEFT_PREFIX + name] = p.detach().float().contiguous().clone()
    return out


def load_adapter_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "adapter") -> dict:
    """Copy PEFT-named adapter tensors into `model` (already given its LoRA layers); whole weights
    of the model (modules_to_save) are replaced and train on. Returns the tensors that are not part
    of the model (new heads), under their names without PEFT's prefix."""
    from ..errors import InputError

    params = dict(model.named_parameters())
    extra = {}
    for key, t in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        if name not in params:
            extra[name] = t
            continue
        p = params[name]
        if p.shape != t.shape:
            raise InputError(f"{source}: tensor {key} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(t)
        p.requires_grad_(True)
    missing = [n for n in params if (".lora_A." in n or ".lora_B." in n) and PEFT_PREFIX + n not in tensors]
    if missing:
        raise InputError(f"{source}: adapter tensor {PEFT_PREFIX + missing[0]} is missing "
                         f"({len(missing)} of {2 * len(lora_layers(model))})")
    return extra


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W += scaling * B @ A) and drop the LoRA layers:
    the plain model, every weight trainable again, as fast as one without adapters."""
    for name, layer in lora_layers(model).items():
        base = layer.base
        base.weight += layer.delta_weight().to(base.weight.dtype)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def peft_target_modules(model: nn.Module) -> list[str]:
    """adapter_config.json's target_modules for the adapted layers: the shortest name suffixes that
    select exactly these layers under PEFT's matching (["c_attn"], ["mlp.c_proj"], ...)."""
    adapted = set(lora_layers(model))
    candidates = [n for n, m in model.named_modules() if is_linear(m) or isinstance(m, LoRALinear)]
    depth = 1
    while True:  # ends at the latest with the full paths
        suffixes = sorted({".".join(n.split(".")[-depth:]) for n in adapted})
        if {n for n in candidates if any(n == s or n.endswith("." + s) for s in suffixes)} == adapted:
            return suffixes
        depth += 1
