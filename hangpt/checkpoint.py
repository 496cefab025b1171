"""Checkpoint folders: one format for every stage, in Hugging Face GPT-2 layout.

    config.json, model.safetensors, tokenizer.json (+ tokenizer_config.json, special_tokens_map.json),
    generation_config.json, hangpt.json (our metadata), train_state.pt (only while training)

A folder written here loads unchanged with `transformers` (`GPT2LMHeadModel.from_pretrained`), and
any GPT-2-architecture folder written by `transformers` (safetensors or pytorch_model.bin) loads
here. Saving is atomic: the new folder is written beside the old one and swapped in with renames,
so a crash leaves either the old checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .errors import InputError
from .models import GPT, GPTConfig
from .tokenizer import Tokenizer

# Buffers old GPT-2 checkpoints carry (the causal mask); recomputed here, never loaded.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_TRAIN_STATE = "train_state.pt"
_OLD_SUFFIX = ".old-checkpoint"


@dataclass
class Checkpoint:
    model: GPT
    tokenizer: Tokenizer
    meta: dict = field(default_factory=dict)  # hangpt.json (empty for a plain HF folder)
    extra_tensors: dict = field(default_factory=dict)  # head weights beyond the LM (score.*, v_head.*, ...)
    generation_config: dict = field(default_factory=dict)
    path: Path | None = None


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A local checkpoint folder, or a hub id (e.g. `skt/kogpt2-base-v2`) downloaded once into
    `$HANGPT_HOME/hub` when the machine is online."""
    path = Path(name_or_path)
    _recover_interrupted_swap(path)
    if path.is_dir():
        return path
    if path.exists():
        raise InputError(f"{path}: is a file, not a checkpoint folder")
    name = str(name_or_path)
    if name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise InputError(f"{path}: no such checkpoint folder")
    try:
        from huggingface_hub import snapshot_download

        cache = Path(os.environ.get("HANGPT_HOME", Path.home() / ".cache" / "hangpt")) / "hub"
        return Path(
            snapshot_download(
                name,
                cache_dir=str(cache),
                allow_patterns=["*.json", "*.safetensors", "*.txt", "pytorch_model.bin"],
            )
        )
    except Exception as e:
        raise InputError(f"{name}: not a local folder, and fetching it from the Hugging Face hub failed "
                         f"({type(e).__name__})") from None


def load_checkpoint(name_or_path: str | Path) -> Checkpoint:
    """Load model + tokenizer + metadata from a hangpt or Hugging Face GPT-2 folder."""
    path = resolve_model_dir(name_or_path)
    config_path = path / "config.json"
    if not config_path.exists():
        raise InputError(f"{path}: not a checkpoint folder (no config.json)")
    config = GPTConfig.from_hf_dict(_read_json(config_path))
    state = _read_weights(path)
    model = GPT(config)
    extra = _load_gpt2_state(model, state, path)
    model.eval()
    tokenizer = Tokenizer.load(path)
    if tokenizer.vocab_size > config.vocab_size:
        raise InputError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{config.vocab_size}; they do not belong together"
        )
    meta = _read_json(path / "hangpt.json") if (path / "hangpt.json").exists() else {}
    gen = _read_json(path / "generation_config.json") if (path / "generation_config.json").exists() else {}
    return Checkpoint(model, tokenizer, meta, extra, gen, path)


def load_train_state(path: str | Path) -> dict | None:
    """The optimizer/step/data/RNG state saved beside the weights while training, if any."""
    path = Path(path)
    _recover_interrupted_swap(path)
    f = path / _TRAIN_STATE
    return torch.load(f, weights_only=True) if f.exists() else None


def save_checkpoint(
    out_dir: str | Path,
    model: GPT,
    tokenizer: Tokenizer,
    meta: dict,
    *,
    extra_tensors: dict | None = None,
    generation_config: dict | None = None,
    train_state: dict | None = None,
    files: dict[str, bytes] | None = None,
    extra_config: dict | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically.

    meta goes to hangpt.json (stage, chat template, head, training summary). extra_tensors are
    saved beside the LM weights under their own names (e.g. `score.weight`). Files already in the
    old folder that this save does not write (loss plots, reports, a data cache folder) are carried over.
    extra_config adds keys to config.json (e.g. num_labels/id2label for a classification head).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_swap(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        cfg = model.config
        config = {**cfg.to_hf_dict(), **(extra_config or {})}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tensors = _to_gpt2_state(model)
        for name, t in (extra_tensors or {}).items():
            tensors[name] = t.detach().to(torch.float32).contiguous().clone()
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save(tmp, model_max_length=cfg.n_positions)
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
        gen.update(generation_config or {})
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        meta = {"hangpt_version": __version__, **meta}
        (tmp / "hangpt.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2))
        if train_state is not None:
            torch.save(train_state, tmp / _TRAIN_STATE)
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
        if out.is_dir():
            for old in out.iterdir():
                if (tmp / old.name).exists() or old.name == _TRAIN_STATE:
                    continue
                if old.is_file():
                    shutil.copy2(old, tmp / old.name)
                elif old.is_dir():  # e.g. the run's token cache: moved, not copied (it can be large)
                    os.replace(old, tmp / old.name)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_file_atomic(path: str | Path, data: bytes) -> None:
    """Replace one file atomically (temp file + rename), e.g. a plot inside a checkpoint folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def drop_train_state(out_dir: str | Path) -> None:
    """Training finished: the optimizer state is no longer needed in the final checkpoint."""
    (Path(out_dir) / _TRAIN_STATE).unlink(missing_ok=True)


# -- internals ----------------------------------------------------------------------------------


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the old folder aside, the new one into place, then delete the old one. A crash
    between the two renames leaves `out.old-checkpoint`, which `_recover_interrupted_swap` restores."""
    old = out.with_name(out.name + _OLD_SUFFIX)
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _recover_interrupted_swap(out: Path) -> None:
    old = out.with_name(out.name + _OLD_SUFFIX)
    if old.is_dir():
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, out)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    st = path / "model.safetensors"
    if st.exists():
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except Exception as e:
            raise InputError(f"{st}: unreadable safetensors file ({e})") from None
    pt = path / "pytorch_model.bin"
    if pt.exists():
        try:
            return torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"{pt}: unreadable weights file ({type(e).__name__})") from None
    raise InputError(f"{path}: no model.safetensors or pytorch_model.bin in this folder")


def _to_gpt2_state(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict under GPT2LMHeadModel's names and layouts (lm_head is tied, so omitted)."""
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        out[name] = t.detach().to(torch.float32).contiguous().clone()
    return out


def _load_gpt2_state(model: GPT, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Copy GPT-2 tensors into `model`; return the tensors that are not part of the LM (heads)."""
    own = model.state_dict()
    loaded, extra = {}, {}
    for name, t in state.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        key = name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name
        if key not in own:
            extra[name] = t
            continue
        if t.shape != own[key].shape:
            raise InputError(f"{path}: tensor {name} has shape {tuple(t.shape)}, config.json implies "
                             f"{tuple(own[key].shape)}")
        loaded[key] = t.to(torch.float32)
    loaded.pop("lm_head.weight", None)  # tied to the token embedding
    missing = [k for k in own if k not in loaded and k != "lm_head.weight"]
    if missing:
        raise InputError(f"{path}: weights are missing {len(missing)} tensors, e.g. {missing[0]}")
    model.load_state_dict(loaded, strict=False)
    return extra
