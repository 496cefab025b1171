"""The CPU fast path of decoding: each step, and short prompts, in one C call (decode_step.c), for
GPT-2 and the rotary families (Llama, GPT-NeoX, GPT-J).

The C file is compiled once per machine with the system's C compiler (`cc`, OpenMP) into the
user's cache folder and loaded with ctypes; nothing is built at install time. Where that is not
possible (no compiler, no OpenMP, not a CPU, neither float32 nor bfloat16) the engine uses the
PyTorch forward, which gives the same tokens (tests/test_fast_decode*.py compare the two). Set
HANGPT_FAST_DECODE=0 to always use PyTorch.

bfloat16 models are run from their bf16 weights (no float32 copy), with AVX512-BF16 dot products
where the compiled library has them (-march=native on such a CPU) and widened to float32 elsewhere.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import operator
import os
import platform
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..models import GPT, GPTJ, CausalLM, GPTNeoX, KVCache, Llama
from ..models.layers import Rotary
from ..models.lora import has_lora

SOURCE = Path(__file__).with_name("decode_step.c")
# tried in order: this CPU's widest vectors where the compiler knows the flag (x86 with AVX-512),
# this CPU's instruction set, then the generic target
FLAG_CHOICES = (["-march=native", "-mprefer-vector-width=512"], ["-march=native"], [])
# prompts up to this many tokens (all rows together) are prefilled in C too; longer ones by PyTorch,
# whose attention kernel is better at long sequences
PREFILL_TOKENS = 64


def cache_folder() -> Path:
    """Where the compiled step is kept: $HANGPT_CACHE, else $XDG_CACHE_HOME/hangpt or ~/.cache/hangpt."""
    if os.environ.get("HANGPT_CACHE"):
        return Path(os.environ["HANGPT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hangpt"


def _cpu_signature() -> str:
    """The compiled file uses this CPU's instruction set (-march=native): key it by the CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next((line for line in lines if line.startswith("flags")), "") + platform.machine()
    except OSError:
        return platform.machine() + platform.processor()


class CompileError(OSError):
    """The C compiler is missing or rejected the file (another folder would not help)."""


class UnsafeFolder(OSError):
    """A folder or library file another user could have written: never loaded from."""


def _check_private(path: Path) -> None:
    """Refuse `path` unless it is this user's own (not a symlink) and no one else can write it."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFolder(f"{path} is not private to this user (owner uid {info.st_uid}, mode "
                           f"{stat.filemode(info.st_mode)}); not loading a library from it")


def private_folder(folder: Path) -> Path:
    """`folder`, created with mode 0700 when missing, after checking that only this user can write it
    (a library in a folder another user can write could be replaced by theirs)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(folder)
    return folder


def _compile(target: Path) -> None:
    """Build the shared library atomically (temp file + rename), so parallel first uses never
    load a half-written file."""
    compiler = os.environ.get("CC", "cc")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        base = [compiler, "-O3", "-fopenmp", "-shared", "-fPIC", str(SOURCE), "-o", str(out), "-lm"]
        for flags in FLAG_CHOICES:
            try:
                result = subprocess.run(base[:1] + flags + base[1:], capture_output=True, text=True)
            except OSError as exc:
                raise CompileError(f"cannot run {compiler}: {exc.strerror or exc}") from exc
            if result.returncode == 0:
                out.chmod(0o700)  # whatever the umask: only this user may replace what gets loaded
                os.replace(out, target)
                return
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        raise CompileError(f"{compiler} failed: {(errors or ['no output'])[0].strip()}")


class Shape(ctypes.Structure):
    """decode_step.c's Shape: the model's sizes and this call's (same fields, same order)."""

    _fields_ = [(name, ctypes.c_int) for name in (
        "layers", "heads", "kv_heads", "head_dim", "hidden", "mlp", "vocab",
        "queries", "outputs", "batch", "max_len", "past", "threads")] + [
        ("eps", ctypes.c_float)] + [(name, ctypes.c_int) for name in (
        "bf16", "layer_norm", "parallel", "rotary_dims", "interleaved", "activation")]


class Queries(ctypes.Structure):
    """decode_step.c's Queries: the tokens of one call, their places in the cache, and the outputs."""

    _fields_ = [("tokens", ctypes.c_void_p), ("positions", ctypes.c_void_p), ("rows", ctypes.c_void_p),
                ("slots", ctypes.c_void_p), ("keep", ctypes.c_void_p), ("keep_stride", ctypes.c_longlong),
                ("out_rows", ctypes.c_void_p), ("kcache", ctypes.c_void_p), ("vcache", ctypes.c_void_p),
                ("logits", ctypes.c_void_p), ("argmax", ctypes.c_void_p), ("scratch", ctypes.c_void_p)]


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled decode step, or None where it cannot be built (the engine then uses PyTorch).
    Built in the cache folder, or in a private folder in the temp folder when that one cannot be
    written; loaded only from a folder and file of this user's that no one else can write."""
    if os.environ.get("HANGPT_FAST_DECODE", "1") == "0" or sys.platform == "win32":
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + repr(FLAG_CHOICES).encode() + _cpu_signature().encode())
    name = f"decode_step-{key.hexdigest()[:16]}.so"
    lib = problem = None
    for folder in (cache_folder(), Path(tempfile.gettempdir()) / f"hangpt-{os.getuid()}"):
        target = folder / name
        try:
            private_folder(folder)
            if not target.exists():
                _compile(target)
            _check_private(target)
            lib = ctypes.CDLL(str(target))
            break
        except CompileError as exc:
            problem = exc
            break
        except OSError as exc:  # a folder we cannot write to, or not ours alone: try the next one
            problem = exc
    if lib is None:
        warnings.warn(f"fast CPU decoding unavailable ({problem}); using the PyTorch forward", stacklevel=2)
        return None
    shape, queries = ctypes.POINTER(Shape), ctypes.POINTER(Queries)
    for family in ("gpt2", "rotary"):
        forward, scratch = getattr(lib, f"hangpt_{family}_forward"), getattr(lib, f"hangpt_{family}_scratch")
        forward.restype, forward.argtypes = None, [shape, ctypes.c_void_p, queries]
        scratch.restype, scratch.argtypes = ctypes.c_size_t, [shape]
    lib.hangpt_reorder_cache.restype = None
    lib.hangpt_reorder_cache.argtypes = [shape, ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 4
    lib.hangpt_native_bf16.restype, lib.hangpt_native_bf16.argtypes = ctypes.c_int, []
    lib.hangpt_topk.restype = None
    lib.hangpt_topk.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                ctypes.c_void_p, ctypes.c_void_p]
    return lib


def topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(x, k) along the last dimension, largest first, of a 2-D tensor; in C for a
    float32 CPU tensor when the library is there (beam search: 8 of 32768 in ~20 instead of
    ~100-200 us), ties to the lower index."""
    lib = library()
    if lib is None or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 or k > x.shape[1]:
        return torch.topk(x, k)
    x = x.contiguous()
    values, indices = torch.empty(x.shape[0], k), torch.empty(x.shape[0], k, dtype=torch.long)
    lib.hangpt_topk(x.data_ptr(), x.shape[0], x.shape[1], k, torch.get_num_threads(), values.data_ptr(),
                    indices.data_ptr())
    return values, indices


def weight_key(t: torch.Tensor) -> tuple[int, int]:
    """Changes whenever the tensor's storage or contents change (inference tensors cannot change
    outside inference mode and carry no version counter)."""
    return t.data_ptr(), (0 if t.is_inference() else t._version)


class FastDecoder:
    """Runs a model's forward with a KVCache in one C call: one new token per row, or short prompts.

    `bind` reads the weight pointers once per generation (PPO trains the model between
    generations; a changed tensor is noticed by its version counter), so a step costs one C call
    plus a few Python operations. A family's subclass names its C function, its tensors in the
    order the C code reads them, its MLP width and norm epsilon, and (the rotary families) its
    variations of the block (Shape's last fields).

    A bf16 model's matrices are passed as they are, its vectors (norms, biases) as float32 copies
    (a few KB). native_bf16: use the library's AVX512-BF16 dot products (default: where it has
    them); False takes the portable path, which computes the same sums in another order.
    """

    family = ""
    mlp_width_field: str  # the config fields holding the MLP's width and the norms' epsilon
    eps_field: str

    @property
    def mlp_width(self) -> int:
        return getattr(self.model.config, self.mlp_width_field)

    @property
    def eps(self) -> float:
        return getattr(self.model.config, self.eps_field)

    def __init__(self, model: CausalLM, lib: ctypes.CDLL):
        self.model, self.lib = model, lib
        self.bf16 = model.lm_head.weight.dtype == torch.bfloat16
        self.native_bf16 = bool(lib.hangpt_native_bf16())
        self._forward = getattr(lib, f"hangpt_{self.family}_forward")
        self._scratch_floats = getattr(lib, f"hangpt_{self.family}_scratch")
        self._key = None
        self._local = threading.local()  # scratch memory per thread (the server may decode in several)

    @staticmethod
    def supports(model: CausalLM) -> bool:
        """A family with a C step (GPT-2, Llama, GPT-NeoX, GPT-J), float32 or bfloat16 throughout on a
        CPU, without LoRA layers (those run unmerged in PyTorch), and a C compiler."""
        p = model.lm_head.weight
        return (type(model) in DECODERS and p.device.type == "cpu" and p.dtype in (torch.float32, torch.bfloat16)
                and all(t.dtype == p.dtype for t in model.parameters()) and not has_lora(model)
                and library() is not None)

    @staticmethod
    def for_model(model: CausalLM, lib: ctypes.CDLL) -> "FastDecoder":
        """The decoder of the model's family (check `supports` first)."""
        return DECODERS[type(model)](model, lib)

    def tensors(self, head: Callable[[], torch.Tensor]) -> list[torch.Tensor | None]:
        raise NotImplementedError

    def bind(self, head: Callable[[], torch.Tensor]) -> None:
        """Take the current weights; head() gives the LM head as (hidden, vocab), contiguous (the
        engine's copy, built only by the families that read it)."""
        params = self.tensors(head)
        key = [None if t is None else weight_key(t) for t in params]
        if key != self._key:  # kept alive for C; vectors in float32 (a bf16 model's are small)
            self._weights = [None if t is None else t.detach().float() if t.dim() == 1 else t.detach().contiguous()
                             for t in params]
            self._pointers = (ctypes.c_void_p * len(params))(*[pointer(t) for t in self._weights])
            self._key = key

    # Shape's layer_norm, parallel, rotary_dims, interleaved, activation (the rotary families')
    variant: tuple[int, ...] = (0, 0, 0, 0, 0)

    def shape(self, cache: KVCache, queries: int = 0, outputs: int = 0) -> Shape:
        cfg = self.model.config
        return Shape(cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, self.mlp_width,
                     cfg.vocab_size, queries, outputs, cache.k.shape[1], cache.k.shape[3], cache.length,
                     torch.get_num_threads(), self.eps, 2 if self.bf16 and self.native_bf16 else int(self.bf16),
                     *self.variant)

    def reorder_rows(self, cache: KVCache, index: torch.Tensor, spare_k, spare_v) -> None:
        """For KVCache.reorder (beam search, every step): row b of the cache takes the filled
        positions of row index[b], in place, in one C call (spare_k/v: scratch of the cache's shape)."""
        parents = index.to(torch.long).contiguous()
        self.lib.hangpt_reorder_cache(ctypes.byref(self.shape(cache)), parents.data_ptr(), cache.length,
                                      cache.k.data_ptr(), cache.v.data_ptr(), spare_k.data_ptr(), spare_v.data_ptr())

    def step(self, tokens: torch.Tensor, cache: KVCache, positions: torch.Tensor | None,
             padding_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One new token per cache row: tokens (B,); positions (B, 1) or None (then the cache
        length); padding_mask (B, >= past+1) bool or None. Appends to the cache and returns the
        next-token logits (B, vocab) and their argmax (B,), the greedy tokens, from the same call."""
        B = tokens.shape[0]
        return self._run(tokens, positions, None, None, padding_mask, cache, None, B, cache.length + 1)

    def step_rows(self, tokens: torch.Tensor, cache: KVCache, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One new token for each of the first tokens.numel() cache rows, each at its own position
        slots[b] (rows of different lengths: continuous batching); returns as `step`."""
        B = tokens.shape[0]
        return self._run(tokens, slots, None, slots, None, cache, None, B, int(slots.max()) + 1)

    def prefill(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None, padding_mask: torch.Tensor | None,
                cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts (B, P) into an empty cache in one call; returns the logits and argmax of
        each row's last position. For short prompts only (PREFILL_TOKENS): the attention here
        is the plain loop, not SDPA's blocked kernel."""
        B, P = input_ids.shape
        slots = torch.arange(P).repeat(B)
        positions = slots if position_ids is None else position_ids
        rows = torch.arange(B)
        return self._run(input_ids, positions, rows.repeat_interleave(P), slots, padding_mask, cache,
                         rows * P + (P - 1), B, P)

    def _run(self, tokens, positions, rows, slots, padding_mask, cache: KVCache, out_rows, M: int, length: int):
        """The C forward of tokens.numel() queries (see decode_step.c); rows, slots, out_rows None
        for one decoding query per row."""
        cfg = self.model.config
        if length > cfg.context_length:
            from ..errors import InputError

            raise InputError(f"sequence of {length} tokens is longer than the model's context ({cfg.context_length})")
        if cache.k.dtype != self.model.lm_head.weight.dtype:
            raise ValueError(f"a {cache.k.dtype} KV cache for a {self.model.lm_head.weight.dtype} model")
        if not (cache.k.is_contiguous() and cache.v.is_contiguous()):
            cache.k, cache.v = cache.k.contiguous(), cache.v.contiguous()
        shape = self.shape(cache, tokens.numel(), M)
        need = self._scratch_floats(ctypes.byref(shape))
        scratch = getattr(self._local, "scratch", None)
        if scratch is None or scratch.numel() < need:
            scratch = self._local.scratch = torch.empty(need)
        logits = torch.empty(M, cfg.vocab_size)
        argmax = torch.empty(M, dtype=torch.long)
        tokens, positions = as_long(tokens), as_long(positions)
        if padding_mask is not None and padding_mask.stride(1) != 1:
            padding_mask = padding_mask.contiguous()
        queries = Queries(tokens.data_ptr(), pointer(positions), pointer(rows), pointer(slots), pointer(padding_mask),
                          0 if padding_mask is None else padding_mask.stride(0), pointer(out_rows), cache.k.data_ptr(),
                          cache.v.data_ptr(), logits.data_ptr(), argmax.data_ptr(), scratch.data_ptr())
        self._forward(ctypes.byref(shape), self._pointers, ctypes.byref(queries))
        cache.length = length
        return logits, argmax


class GPT2Decoder(FastDecoder):
    family = "gpt2"
    layer_params = operator.attrgetter(  # per block, in the order decode_step.c reads them
        "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
        "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")

    mlp_width_field, eps_field = "mlp_width", "layer_norm_epsilon"

    def tensors(self, head):
        """The LM head transposed in float32; in bf16 nn.Linear's (a copy would double its memory)."""
        tr = self.model.transformer
        lm_head = self.model.lm_head.weight if self.bf16 else head()
        return [p for block in tr.h for p in self.layer_params(block)] + [
            tr.ln_f.weight, tr.ln_f.bias, tr.wte.weight, tr.wpe.weight, lm_head]


# decode_step.c's ACT_*: the MLP activations of models.layers.ACTIVATIONS
ACTIVATION_CODES = {"silu": 0, "gelu": 1, "gelu_new": 2, "gelu_pytorch_tanh": 2, "relu": 3}


class RotaryDecoder(FastDecoder):
    """The families of decode_step.c's hangpt_rotary_forward: a subclass lists each block's tensors
    in the order of its ROTARY_PER_LAYER enum (None where the family has no such part)."""

    family = "rotary"

    @staticmethod
    def layer_tensors(block) -> list[torch.Tensor | None]:
        raise NotImplementedError

    def tensors(self, head):
        """The blocks', then the final norm and its bias, embedding, head and its bias, rotary frequencies."""
        m, norm = self.model, self.model.final_norm
        rotary = next(module for module in m.modules() if isinstance(module, Rotary))
        return [t for block in m.blocks for t in self.layer_tensors(block)] + [
            norm.weight, getattr(norm, "bias", None), m.embedding().weight, m.lm_head.weight, m.lm_head.bias,
            rotary.inv_freq]


class LlamaDecoder(RotaryDecoder):
    """llama, mistral, qwen2, qwen3: RMSNorms, SwiGLU, rotary on the whole head."""

    mlp_width_field, eps_field = "intermediate_size", "rms_norm_eps"

    @property
    def variant(self) -> tuple[int, ...]:
        return 0, 0, self.model.config.head_dim, 0, ACTIVATION_CODES["silu"]

    @staticmethod
    def layer_tensors(block) -> list[torch.Tensor | None]:
        a, mlp = block.self_attn, block.mlp
        q_norm, k_norm = (a.q_norm.weight, a.k_norm.weight) if a.qk_norm else (None, None)
        return [block.input_layernorm.weight, None, None, None, a.q_proj.weight, a.q_proj.bias, a.k_proj.weight,
                a.k_proj.bias, a.v_proj.weight, a.v_proj.bias, a.o_proj.weight, a.o_proj.bias, q_norm, k_norm,
                block.post_attention_layernorm.weight, None, mlp.gate_proj.weight, mlp.gate_proj.bias,
                mlp.up_proj.weight, mlp.up_proj.bias, mlp.down_proj.weight, mlp.down_proj.bias]


class GPTNeoXDecoder(RotaryDecoder):
    """GPT-NeoX (polyglot-ko): LayerNorms, the fused query_key_value read as it is (head by head),
    partial rotate-half rotary, a GELU MLP, the residual parallel or sequential."""

    mlp_width_field, eps_field = "intermediate_size", "layer_norm_eps"

    @property
    def variant(self) -> tuple[int, ...]:
        cfg = self.model.config
        return 1, int(cfg.use_parallel_residual), cfg.rotary_ndims, 0, ACTIVATION_CODES[cfg.hidden_act]

    @staticmethod
    def layer_tensors(block) -> list[torch.Tensor | None]:
        a, mlp, n1, n2 = block.attention, block.mlp, block.input_layernorm, block.post_attention_layernorm
        return [n1.weight, n1.bias, a.query_key_value.weight, a.query_key_value.bias] + [None] * 6 + [
            a.dense.weight, a.dense.bias, None, None, n2.weight, n2.bias, None, None, mlp.dense_h_to_4h.weight,
            mlp.dense_h_to_4h.bias, mlp.dense_4h_to_h.weight, mlp.dense_4h_to_h.bias]


class GPTJDecoder(RotaryDecoder):
    """GPT-J (KoGPT): one LayerNorm feeding attention and MLP in parallel, interleaved partial
    rotary, q/k/v/out without biases, a GELU MLP, the LM head with a bias."""

    mlp_width_field, eps_field = "mlp_width", "layer_norm_epsilon"

    @property
    def variant(self) -> tuple[int, ...]:
        cfg = self.model.config
        return 1, 1, cfg.rotary_dims, 1, ACTIVATION_CODES[cfg.activation_function]

    @staticmethod
    def layer_tensors(block) -> list[torch.Tensor | None]:
        a, mlp = block.attn, block.mlp
        return [block.ln_1.weight, block.ln_1.bias, None, None, a.q_proj.weight, None, a.k_proj.weight, None,
                a.v_proj.weight, None, a.out_proj.weight, None, None, None, None, None, None, None,
                mlp.fc_in.weight, mlp.fc_in.bias, mlp.fc_out.weight, mlp.fc_out.bias]


DECODERS = {GPT: GPT2Decoder, Llama: LlamaDecoder, GPTNeoX: GPTNeoXDecoder, GPTJ: GPTJDecoder}


def as_long(t: torch.Tensor | None) -> torch.Tensor | None:
    """A contiguous int64 tensor with t's values (t itself when it already is one)."""
    if t is None or (t.dtype == torch.long and t.is_contiguous()):
        return t
    return t.to(torch.long).contiguous()


def pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()
