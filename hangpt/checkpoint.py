"""Checkpoint folders: one format for every stage, in the Hugging Face layout of the model's family.

    config.json, model.safetensors (or shards + model.safetensors.index.json), tokenizer.json
    (+ tokenizer_config.json, special_tokens_map.json), generation_config.json, hangpt.json (our
    metadata), train_state.pt (only while training)

A folder written here loads unchanged with `transformers` (`AutoModelForCausalLM.from_pretrained`),
and any folder of a supported family written by `transformers` (safetensors, sharded or not, or
pytorch_model.bin, sharded or not) loads here, memory-mapped and in its own dtype unless asked otherwise. Saving is atomic: the new folder is written beside the old one and swapped in with renames,
so a crash leaves either the old checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .device import native_bf16
from .errors import InputError
from .models import CausalLM, build_model, config_from_hf
from .models.lora import has_lora
from .tokenizer import Tokenizer

_TRAIN_STATE = "train_state.pt"
_OLD_SUFFIX = ".old-checkpoint"


@dataclass
class Checkpoint:
    model: CausalLM
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
        from huggingface_hub import hf_hub_download, snapshot_download

        cache = Path(os.environ.get("HANGPT_HOME", Path.home() / ".cache" / "hangpt")) / "hub"
        # config.json first: an unsupported architecture must not cost a multi-GB download
        config_from_hf(_read_json(Path(hf_hub_download(name, "config.json", cache_dir=str(cache)))))
        folder = Path(snapshot_download(name, cache_dir=str(cache),
                                        allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja"]))
        if not any(folder.glob("*.safetensors")):  # an older upload: PyTorch files only (one, or shards)
            folder = Path(snapshot_download(name, cache_dir=str(cache), allow_patterns=["pytorch_model*.bin"]))
        return folder
    except InputError as e:
        raise InputError(f"{name}: {e}") from None
    except Exception as e:
        raise InputError(f"{name}: not a local folder, and fetching it from the Hugging Face hub failed "
                         f"({type(e).__name__})") from None


_dtype_choice = "auto"


def use_dtype(name: str) -> None:
    """The dtype load_checkpoint uses when not given one (the CLI's --dtype, one choice per run)."""
    global _dtype_choice
    if name != "auto" and name not in DTYPES:
        raise InputError(f"--dtype {name}: choose auto, {', '.join(DTYPES)}")
    _dtype_choice = name


def load_checkpoint(name_or_path: str | Path, dtype: str | None = None, merge_adapter: bool = True) -> Checkpoint:
    """Load model + tokenizer + metadata from a hangpt or Hugging Face folder of a supported family.

    dtype (default: the CLI's --dtype, else "auto"): "auto" keeps the checkpoint's dtype where this machine computes in it well (float32;
    bfloat16 on CPUs with native bf16 or on a GPU) and uses float32 otherwise; "float32",
    "bfloat16" or "float16" ask for one. Weights already in that dtype stay memory-mapped from the
    safetensors files: loading copies nothing.
    A LoRA adapter folder loads as its base with the adapter folded in (merge_adapter=False keeps
    the adapter layers apart, to continue training them).
    """
    dtype = dtype or _dtype_choice
    path = resolve_model_dir(name_or_path)
    if (path / ADAPTER_CONFIG).exists():
        return _load_adapter(path, dtype, merge_adapter)
    config_path = path / "config.json"
    if not config_path.exists():
        raise InputError(f"{path}: not a checkpoint folder (no config.json)")
    config = config_from_hf(_read_json(config_path))
    state = _read_weights(path)
    with torch.device("meta"):  # no random init, no memory: every tensor comes from the files
        model = build_model(config)
    extra = _load_state(model, state, path, _target_dtype(dtype, state))
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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _target_dtype(dtype: str, state: dict[str, torch.Tensor]) -> torch.dtype:
    if dtype != "auto":
        if dtype not in DTYPES:
            raise InputError(f"--dtype {dtype}: choose auto, {', '.join(DTYPES)}")
        return DTYPES[dtype]
    stored = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    if stored == torch.float32 or torch.cuda.is_available():
        return stored
    return torch.bfloat16 if stored == torch.bfloat16 and native_bf16() else torch.float32


def load_train_state(path: str | Path) -> dict | None:
    """The optimizer/step/data/RNG state saved beside the weights while training, if any."""
    path = Path(path)
    _recover_interrupted_swap(path)
    f = path / _TRAIN_STATE
    if not f.exists():
        return None
    try:
        return torch.load(f, weights_only=True)
    except Exception as e:  # torch's own message is many lines and suggests weights_only=False (unsafe)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{f}: unreadable training state ({reason}); start over with --overwrite") from None


def save_checkpoint(
    out_dir: str | Path,
    model: CausalLM,
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
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_swap(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    remove_interrupted_saves(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        cfg = model.config
        if has_lora(model):  # a LoRA run: PEFT's adapter files, the base named in hangpt.json
            meta = {**meta, "adapter": _write_adapter(tmp, model, meta, extra_tensors, extra_config)}
        else:
            tensors = _hf_state(model)
            dtype = str(model.lm_head.weight.dtype).removeprefix("torch.")
            config = {**cfg.to_hf_dict(), "torch_dtype": dtype, **(extra_config or {})}
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            for name, t in (extra_tensors or {}).items():
                tensors[name] = t.detach().to(torch.float32).contiguous().clone()
            _write_weights(tmp, tensors)
        tokenizer.save(tmp, model_max_length=cfg.context_length)
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
                if (tmp / old.name).exists() or old.name == _TRAIN_STATE or _is_weights_file(old.name):
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


def remove_interrupted_saves(out_dir: str | Path) -> int:
    """Delete the `.OUT.tmp-*` folders that killed saves left beside OUT (a finished save renames its
    folder into place, so none is ever read again); returns how many there were."""
    out = Path(out_dir)
    stale = [p for p in out.parent.glob(f".{glob.escape(out.name)}.tmp-*") if p.is_dir()] if out.parent.is_dir() else []
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return len(stale)


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
    """Every tensor of the folder, safetensors first (a hub folder may also hold the index of
    .bin shards it never downloaded): model.safetensors or its shards, else pytorch_model.bin or
    its shards; shards are the files their index.json names."""
    for index_name, single, read in (("model.safetensors.index.json", "model.safetensors", read_safetensors),
                                     ("pytorch_model.bin.index.json", "pytorch_model.bin", _read_torch_file)):
        index = path / index_name
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise InputError(f"{index}: no weight_map object naming the shards")
            state = {}
            for shard in sorted(set(weight_map.values())):
                if not isinstance(shard, str) or Path(shard).name != shard:
                    raise InputError(f"{index}: shard name {shard!r} is not a file name in this folder")
                if not (path / shard).is_file():
                    raise InputError(f"{path / shard}: shard named by {index_name} is missing")
                state.update(read(path / shard))
            return state
        if (path / single).exists():
            return read(path / single)
    raise InputError(f"{path}: no model.safetensors or pytorch_model.bin (or shards with their index.json) "
                     f"in this folder")


def _read_torch_file(file: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model*.bin state dict, memory-mapped; weights_only unpickles tensors and plain
    containers only, never code."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        raise InputError(f"{file}: unreadable weights file (not a plain PyTorch state dict)") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise InputError(f"{file}: not a state dict of tensors")
    return state


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of one copy-on-write memory map of it.

    The format is an 8-byte header length, a JSON header of {name: dtype, shape, data_offsets}
    and the raw data. Views of the map cost no memory until pages are read, and pages are read
    once (the library's own loader copies every tensor out of its map: twice the memory at peak,
    which a 6B model on a 24 GiB machine cannot afford). Writing to a tensor (training) copies
    only the pages it touches, never the file.
    """
    import mmap
    import struct

    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if f.seek(0, 2) > 8 + n else None
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            count = (end - start) // dtype.itemsize
            flat = (torch.frombuffer(mapped, dtype=dtype, count=count, offset=8 + n + start) if count
                    else torch.empty(0, dtype=dtype))
            out[name] = flat.view(info["shape"])
        return out
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise InputError(f"{file}: unreadable safetensors file ({e or 'truncated'})") from None


MAX_SHARD_BYTES = 5 * 2**30  # transformers' default shard size


def _write_weights(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """model.safetensors, or shards of at most MAX_SHARD_BYTES with model.safetensors.index.json."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    if len(shards) == 1:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _is_weights_file(name: str) -> bool:
    """Weight files of an older save, which the new save's weights replace (never carried over)."""
    return name.startswith(("model.safetensors", "model-", "pytorch_model")) and name.endswith(
        (".safetensors", ".bin", ".index.json")) or name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)


def _hf_state(model: CausalLM) -> dict[str, torch.Tensor]:
    """The model's tensors under its family's checkpoint names (a tied LM head is omitted)."""
    tied = model.tied
    return {name: t.detach().contiguous() for name, t in model.state_dict().items()
            if not (tied and name == "lm_head.weight")}


def _load_state(model: CausalLM, state: dict[str, torch.Tensor], path: Path,
                dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Put the checkpoint's tensors into `model` (built on the meta device) in `dtype`; return the
    tensors that are not part of the LM (heads such as score.weight or v_head.*)."""
    own = model.state_dict()
    loaded, extra = {}, {}
    for name, t in state.items():
        if name.endswith(model.ignored_checkpoint_suffixes):
            continue
        key = model.checkpoint_key(name)
        if key not in own:
            extra[name] = t
            continue
        if t.shape != own[key].shape:
            raise InputError(f"{path}: tensor {name} has shape {tuple(t.shape)}, config.json implies "
                             f"{tuple(own[key].shape)}")
        loaded[key] = t.to(dtype) if t.is_floating_point() else t
    tied = model.tied
    if tied:
        loaded.pop("lm_head.weight", None)
    missing = [k for k in own if k not in loaded and not (tied and k == "lm_head.weight")]
    if missing:
        raise InputError(f"{path}: weights are missing {len(missing)} tensors, e.g. {missing[0]}")
    model.load_state_dict(loaded, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.embedding().weight
    model.reset_buffers()
    return extra


# -- LoRA adapter folders (PEFT's layout) -------------------------------------------------------

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _write_adapter(folder: Path, model: CausalLM, meta: dict, heads: dict | None, extra_config: dict | None) -> dict:
    """PEFT's adapter_config.json + adapter_model.safetensors for a model with LoRA layers; new
    heads (score, v_head) go beside the adapter under PEFT's prefix. Returns hangpt.json's
    "adapter" entry: the base folder (never copied), the vocabulary size and the heads."""
    from safetensors.torch import save_file

    from .models.lora import PEFT_PREFIX, adapter_state_dict, lora_layers, peft_target_modules

    base = meta.get("base_model", {}).get("path")
    if not base:
        raise InputError("a LoRA run needs the base model's path (base_model.path) in its metadata")
    base = str(Path(base).resolve()) if Path(base).is_dir() else str(base)
    tensors = adapter_state_dict(model)
    tensors.update({PEFT_PREFIX + name: t.detach().float().contiguous().clone() for name, t in (heads or {}).items()})
    layer = next(iter(lora_layers(model).values()))
    reward = "score.weight" in (heads or {})  # PEFT's sequence-classification layout: score is modules_to_save
    config = {
        "peft_type": "LORA", "task_type": "SEQ_CLS" if reward else "CAUSAL_LM", "base_model_name_or_path": base,
        "r": layer.r, "lora_alpha": layer.alpha, "lora_dropout": layer.dropout,
        "use_rslora": layer.scaling != layer.alpha / layer.r, "target_modules": peft_target_modules(model),
        "fan_in_fan_out": layer.fan_in_fan_out, "bias": "none", "modules_to_save": ["score"] if reward else None,
        "init_lora_weights": True, "inference_mode": True, "use_dora": False, "lora_bias": False,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return {"base": base, "vocab_size": model.config.vocab_size, "heads": sorted(heads or {}),
            "extra_config": extra_config or {}}


def _load_adapter(path: Path, dtype: str, merge: bool) -> Checkpoint:
    """A LoRA adapter folder (hangpt's, or PEFT's own with base_model_name_or_path): its base
    checkpoint with the adapter applied; tensors beyond the model are returned as heads."""
    from .models.lora import add_lora, load_adapter_state_dict, merge_lora

    acfg = _read_json(path / ADAPTER_CONFIG)
    meta = _read_json(path / "hangpt.json") if (path / "hangpt.json").exists() else {}
    info = meta.get("adapter", {})
    if acfg.get("peft_type") != "LORA":
        raise InputError(f"{path / ADAPTER_CONFIG}: peft_type {acfg.get('peft_type')!r} is not supported (LORA is)")
    for key in ("use_dora", "lora_bias", "rank_pattern", "alpha_pattern", "layers_to_transform"):
        if acfg.get(key):
            raise InputError(f"{path / ADAPTER_CONFIG}: {key} is not supported")
    base_name = info.get("base") or acfg.get("base_model_name_or_path")
    if not base_name:
        raise InputError(f"{path}: the adapter names no base model (hangpt.json adapter.base or "
                         f"adapter_config.json base_model_name_or_path)")
    base = load_checkpoint(base_name, dtype)
    model = base.model
    if info.get("vocab_size", model.config.vocab_size) != model.config.vocab_size:  # tokens added while training
        model.resize_token_embeddings(info["vocab_size"])
    add_lora(model, acfg["r"], acfg["lora_alpha"], acfg.get("lora_dropout") or 0.0, acfg["target_modules"],
             bool(acfg.get("use_rslora")))
    weights = path / ADAPTER_WEIGHTS
    if not weights.exists():
        raise InputError(f"{path}: no {ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}")
    heads = load_adapter_state_dict(model, read_safetensors(weights), str(weights))
    if merge:
        merge_lora(model)
    model.eval()
    tokenizer = Tokenizer.load(path) if (path / "tokenizer.json").exists() else base.tokenizer
    gen = (_read_json(path / "generation_config.json") if (path / "generation_config.json").exists()
           else base.generation_config)
    return Checkpoint(model, tokenizer, meta or base.meta, heads, gen, path)
