"""Tokenizers: train a byte-level BPE on any corpus; load any tokenizer.json as it comes (byte-level
BPE as GPT-2/Llama 3/Qwen, SentencePiece-style as KoGPT2/Llama 2/Mistral) with its special tokens.

Built on the Hugging Face `tokenizers` library (fast, and the tokenizer.json it writes is what
`AutoTokenizer` reads). A tokenizer trained here NFC-normalizes text first, so Korean typed on a
Mac (decomposed jamo) tokenizes like Korean typed anywhere else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError

EOS = "<|endoftext|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SPECIAL_TOKENS = [EOS, PAD, SYSTEM, USER, ASSISTANT]
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Names that mark a role when a folder declares its special tokens only in tokenizer.json (KoGPT2's hub folder).
_ROLE_NAMES = {
    "bos_token": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"),
    "eos_token": ("</s>", EOS, "<|end_of_text|>", "<eos>"),
    "unk_token": ("<unk>", "[UNK]"),
    "pad_token": ("<pad>", PAD, "[PAD]"),
    "mask_token": ("<mask>", "[MASK]"),
}
_CONFIG_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "pad_token_id"}


def _special(key: str) -> property:
    def get(self) -> str | None:
        return self.specials.get(key)

    def set(self, value: str | None) -> None:
        self.specials[key] = value

    return property(get, set, doc=f"The {key.replace('_', ' ')} (as `AutoTokenizer.{key}` reports it).")


class Tokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` that knows its special tokens by role.

    `config` is the folder's tokenizer_config.json as loaded (None for a tokenizer hangpt trained):
    saving writes it back with only what hangpt changed, so a fine-tuned folder reports exactly
    its base's bos/eos/unk/pad/mask and additional special tokens to `AutoTokenizer`.
    """

    bos_token = _special("bos_token")
    eos_token = _special("eos_token")
    unk_token = _special("unk_token")
    pad_token = _special("pad_token")
    mask_token = _special("mask_token")

    def __init__(self, backend, specials: dict[str, str] | None = None, *, config: dict | None = None,
                 special_map: dict | None = None, chat_template: str | list | None = None,
                 chat_template_file: bool = False):
        self.backend = backend
        self.specials = {k: v for k, v in (specials or {}).items() if v}
        self.config = config
        self.special_map = special_map  # special_tokens_map.json as loaded, if the folder had one
        self.chat_template = chat_template  # jinja text (or named list) for apply_chat_template
        self.chat_template_file = chat_template_file  # it came from chat_template.jinja
        self.added: list[str] = []  # special tokens hangpt added (chat role markers)

    # -- ids ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str | None) -> int | None:
        return self.backend.token_to_id(token) if token else None

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    @property
    def bos_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return self.token_to_id(self.eos_token)

    @property
    def unk_id(self) -> int | None:
        return self.token_to_id(self.unk_token)

    @property
    def mask_id(self) -> int | None:
        return self.token_to_id(self.mask_token)

    @property
    def pad_id(self) -> int:
        """The pad id; falls back to EOS (as GPT-2 users do) so padding always has an id."""
        for token in (self.pad_token, self.eos_token):
            if self.token_to_id(token) is not None:
                return self.token_to_id(token)
        return 0

    @property
    def additional_special_tokens(self) -> list[str]:
        config = self.config or {}
        listed = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
        tokens = [_token_text(t) for t in listed] if isinstance(listed, list) else []
        return tokens + [t for t in self.added if t not in tokens]

    @property
    def all_special_tokens(self) -> list[str]:
        """Every special token (roles and special added tokens), longest first."""
        added = [t.content for t in self.backend.get_added_tokens_decoder().values() if t.special]
        return sorted(set(added) | set(self.specials.values()), key=len, reverse=True)

    def default_chat_template(self) -> str | None:
        """The Jinja chat template apply_chat_template uses by default (of a named list: "default")."""
        if isinstance(self.chat_template, list):
            named = {t.get("name"): t.get("template") for t in self.chat_template if isinstance(t, dict)}
            return named.get("default")
        return self.chat_template or None

    def special_tokens_map(self) -> dict[str, str]:
        """Role -> token, the variables a chat template sees (`bos_token`, `eos_token`, ...)."""
        return {k: v for k, v in self.specials.items() if v}

    # -- text <-> ids --------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Ids exactly as `AutoTokenizer(text)["input_ids"]` gives them: special tokens in the text
        are recognised, and tokenizer.json's post-processor adds BOS/EOS where it says so (as in
        transformers 5, it decides over an `add_bos_token` in tokenizer_config.json)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_with_offsets(self, text: str, add_special_tokens: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each token's (start, end) character span in `text`."""
        enc = self.backend.encode(text, add_special_tokens=add_special_tokens)
        return enc.ids, enc.offsets

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The text of each id on its own (a Korean syllable split over two ids shows as '�')."""
        return [self.decode([i]) for i in ids]

    def add_special_tokens(self, tokens: list[str]) -> list[str]:
        """Add tokens the vocabulary lacks (e.g. chat role markers); returns the ones added.
        The model's embeddings must then be resized to `vocab_size`."""
        missing = [t for t in tokens if self.token_to_id(t) is None]
        if missing:
            from tokenizers import AddedToken

            self.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
            self.added += missing
        return missing

    # -- files ---------------------------------------------------------------------------------
    def save(self, directory: str | Path, model_max_length: int = 1024) -> None:
        """Write tokenizer.json plus the small JSON files `AutoTokenizer.from_pretrained` needs:
        the loaded ones back as they were, with only what hangpt changed updated."""
        directory = Path(directory)
        self.backend.save(str(directory / "tokenizer.json"))
        if self.config is None:
            config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
                      "add_eos_token": False, "clean_up_tokenization_spaces": False}
        else:
            config = dict(self.config)
        config["model_max_length"] = model_max_length
        _update_specials(config, self.specials, self.added)
        if self.added and "added_tokens_decoder" in config:
            config["added_tokens_decoder"] = {**config["added_tokens_decoder"], **{
                str(self.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                           "single_word": False, "special": True} for t in self.added}}
        config.pop("chat_template", None)
        if self.chat_template is not None and self.chat_template_file and isinstance(self.chat_template, str):
            (directory / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
        elif self.chat_template is not None:
            config["chat_template"] = self.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
        if self.special_map is not None or self.config is None:
            special_map = dict(self.special_map or {})
            _update_specials(special_map, self.specials, self.added)
            (directory / "special_tokens_map.json").write_text(json.dumps(special_map, ensure_ascii=False, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        """Load tokenizer.json (or GPT-2's vocab.json + merges.txt) and its special tokens from a folder."""
        from tokenizers import Tokenizer as Backend

        directory = Path(directory)
        config = _read_json_if(directory / "tokenizer_config.json")
        special_map = _read_json_if(directory / "special_tokens_map.json")
        if (directory / "tokenizer.json").exists():
            try:
                backend = Backend.from_file(str(directory / "tokenizer.json"))
            except Exception as e:  # the library's message names the problem, not the file
                raise InputError(f"{directory / 'tokenizer.json'}: not a valid tokenizer file ({e})") from None
        elif (directory / "vocab.json").exists() and (directory / "merges.txt").exists():
            from tokenizers import decoders, models, pre_tokenizers

            bpe = models.BPE.from_file(str(directory / "vocab.json"), str(directory / "merges.txt"))
            backend = Backend(bpe)
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            special_map = special_map or {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}  # GPT-2's
        else:
            raise InputError(f"{directory}: no tokenizer.json (or vocab.json + merges.txt) in this folder")
        specials = {}
        for key in SPECIAL_KEYS:  # tokenizer_config.json first, then special_tokens_map.json, as transformers
            value = _token_text((config or {}).get(key)) or _token_text((special_map or {}).get(key))
            if value:
                specials[key] = value
        if not specials:
            specials = _specials_from_vocab(backend, _read_json_if(directory / "config.json") or {})
        jinja_file = directory / "chat_template.jinja"
        template = jinja_file.read_text(encoding="utf-8") if jinja_file.exists() else (config or {}).get("chat_template")
        return cls(backend, specials, config=config, special_map=special_map, chat_template=template,
                   chat_template_file=jinja_file.exists())


def _update_specials(target: dict, specials: dict[str, str], added: list[str]) -> None:
    """Set the roles whose token differs from `target`'s (kept verbatim otherwise, AddedToken dicts
    included) and list the tokens hangpt added as additional special tokens."""
    for key, value in specials.items():
        if _token_text(target.get(key)) != value:
            target[key] = value
    if added:
        key = "extra_special_tokens" if "extra_special_tokens" in target else "additional_special_tokens"
        listed = list(target.get(key) or [])
        target[key] = listed + [t for t in added if t not in {_token_text(x) for x in listed}]


def _specials_from_vocab(backend, model_config: dict) -> dict[str, str]:
    """Roles for a folder with special tokens only in tokenizer.json: the model config's
    bos/eos/pad ids first, then the conventional names among the special added tokens."""
    special = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    out = {}
    for key, names in _ROLE_NAMES.items():
        config_id = model_config.get(_CONFIG_IDS.get(key, ""))
        by_id = backend.id_to_token(config_id) if isinstance(config_id, int) else None
        out[key] = by_id or next((n for n in names if n in special), None)
    return {k: v for k, v in out.items() if v}


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as {"content": ...}
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json_if(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def train_tokenizer(
    texts: Iterator[str],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    special_tokens: list[str] | None = None,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenization) on an iterator of texts.

    Byte-level means any text can be encoded (no unknown token); merges learned on Korean make
    common syllables and words single tokens.
    """
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    special_tokens = list(special_tokens or SPECIAL_TOKENS)
    if vocab_size < 256 + len(special_tokens):
        raise InputError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least "
                         f"{256 + len(special_tokens)} (256 bytes + special tokens)")
    backend = Backend(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    eos = special_tokens[0]  # GPT-2's convention: one token is bos, eos and unk
    return Tokenizer(backend, {"bos_token": eos, "eos_token": eos, "unk_token": eos,
                               "pad_token": PAD if PAD in special_tokens else None})


def bytes_per_token(tokenizer: Tokenizer, texts: Iterable[str]) -> float:
    """UTF-8 bytes per token: higher means the tokenizer compresses better (GPT-2 on English ~4)."""
    n_bytes = n_tokens = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tokenizer.encode(text))
    return n_bytes / max(n_tokens, 1)
