"""Byte-level BPE tokenizer: train on any corpus, load any GPT-2-style tokenizer.json, encode/decode.

Built on the Hugging Face `tokenizers` library (fast, and the tokenizer.json it writes is what
`AutoTokenizer` reads). Text is NFC-normalized first, so Korean typed on a Mac (decomposed jamo)
tokenizes like Korean typed anywhere else.
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


class Tokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` that knows its end-of-text and pad tokens."""

    def __init__(self, backend, eos_token: str | None = None, pad_token: str | None = None):
        self.backend = backend
        self.eos_token = eos_token if eos_token is not None else _guess_eos(backend)
        self.pad_token = pad_token
        self.chat_template: str | None = None  # jinja text for AutoTokenizer.apply_chat_template

    # -- ids ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    @property
    def eos_id(self) -> int | None:
        return self.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def pad_id(self) -> int:
        """The pad id; falls back to EOS (as GPT-2 users do) so padding always has an id."""
        if self.pad_token and self.token_to_id(self.pad_token) is not None:
            return self.token_to_id(self.pad_token)
        if self.eos_id is not None:
            return self.eos_id
        return 0

    # -- text <-> ids --------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids exactly as `AutoTokenizer(text)["input_ids"]` gives them (special tokens in the
        text are recognised; nothing is added unless the tokenizer's post-processor adds it)."""
        return self.backend.encode(text).ids

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
        return missing

    # -- files ---------------------------------------------------------------------------------
    def save(self, directory: str | Path, model_max_length: int = 1024) -> None:
        """Write tokenizer.json plus the small JSON files `AutoTokenizer.from_pretrained` needs."""
        directory = Path(directory)
        self.backend.save(str(directory / "tokenizer.json"))
        specials = {"eos_token": self.eos_token, "bos_token": self.eos_token, "unk_token": self.eos_token}
        if self.pad_token and self.token_to_id(self.pad_token) is not None:
            specials["pad_token"] = self.pad_token
        specials = {k: v for k, v in specials.items() if v is not None}
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model_max_length,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            **specials,
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
        (directory / "special_tokens_map.json").write_text(json.dumps(specials, ensure_ascii=False, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        """Load tokenizer.json (or GPT-2's vocab.json + merges.txt) from a folder."""
        from tokenizers import Tokenizer as Backend

        directory = Path(directory)
        config_path = directory / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.exists() else {}
        eos = _token_text(config.get("eos_token"))
        pad = _token_text(config.get("pad_token"))
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
            eos = eos or EOS
        else:
            raise InputError(f"{directory}: no tokenizer.json (or vocab.json + merges.txt) in this folder")
        tokenizer = cls(backend, eos_token=eos, pad_token=pad)
        tokenizer.chat_template = config.get("chat_template") if isinstance(config.get("chat_template"), str) else None
        return tokenizer


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised as {"content": ...}
        return value.get("content")
    return value


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def _guess_eos(backend) -> str | None:
    for candidate in (EOS, "</s>", "<eos>", "[SEP]"):
        if backend.token_to_id(candidate) is not None:
            return candidate
    return None


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
    return Tokenizer(backend, eos_token=special_tokens[0], pad_token=PAD if PAD in special_tokens else None)


def bytes_per_token(tokenizer: Tokenizer, texts: Iterable[str]) -> float:
    """UTF-8 bytes per token: higher means the tokenizer compresses better (GPT-2 on English ~4)."""
    n_bytes = n_tokens = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(tokenizer.encode(text))
    return n_bytes / max(n_tokens, 1)
