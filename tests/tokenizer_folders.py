"""Tokenizer folders laid out as real checkpoints ship them, built offline for the tests.

- `kogpt2_folder`: skt/kogpt2-base-v2's layout (SentencePiece-style BPE with `▁`, vocab 51200,
  `<s>`=0 `</s>`=1 `<usr>` `<pad>` `<sys>` `<unk>` `<mask>` ...), with or without
  tokenizer_config.json / special_tokens_map.json (the hub folder declares them only in tokenizer.json);
- `llama2_tokenizer`: Llama 2 / Mistral style (Metaspace, byte fallback, a post-processor adding `<s>`);
- `byte_level_tokenizer`: Llama 3 / Qwen style (byte-level BPE with added special tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "안녕하세요 오늘 날씨가 정말 좋네요", "저는 한국어를 공부하고 있어요", "주말에 친구와 영화를 봤어요",
    "인공지능은 다음 단어를 예측하도록 학습됩니다", "배고파요 밥 먹으러 가요", "Hello world, this is a test.",
    "The quick brown fox jumps over the lazy dog", "요청을 적절히 완료하는 응답을 작성하세요",
    "Below is an instruction that describes a task", "### Instruction(명령어): ### Response(응답):",
] * 20

KOGPT2_SPECIALS = ["<s>", "</s>", "<usr>", "<pad>", "<sys>", "<unk>", "<mask>", "<d>", "</d>"] + \
    [f"<unused{i}>" for i in range(100)]
KOGPT2_ROLES = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                "mask_token": "<mask>"}


def _metaspace_bpe(special: list[str], vocab_size: int, byte_fallback: bool = False) -> Tokenizer:
    """A BPE over `▁`-marked words trained on CORPUS, then padded with unreachable filler pieces up
    to `vocab_size` (real vocabularies are large; the filler keeps the ids where they would be)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=byte_fallback))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    initial = [f"<0x{b:02X}>" for b in range(256)] if byte_fallback else []
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=600, special_tokens=special + initial,
                                                        show_progress=False))
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), vocab_size):
        vocab[f"▁filler{i}"] = i
    tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tok


def kogpt2_folder(path: Path, with_config: bool = True) -> Path:
    """A KoGPT2-layout tokenizer folder; with_config=False declares the special tokens only in tokenizer.json."""
    path.mkdir(parents=True, exist_ok=True)
    tok = _metaspace_bpe(KOGPT2_SPECIALS, 51200)
    tok.save(str(path / "tokenizer.json"))
    if with_config:
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1024, **KOGPT2_ROLES}
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        (path / "special_tokens_map.json").write_text(json.dumps(KOGPT2_ROLES, indent=2))
    return path


def llama2_tokenizer(path: Path, add_bos_token: bool | None = None, chat_template: str | None = None) -> Path:
    """Llama 2 / Mistral style: Metaspace with byte fallback, <unk>=0 <s>=1 </s>=2, `<s>` added by the post-processor."""
    path.mkdir(parents=True, exist_ok=True)
    tok = _metaspace_bpe(["<unk>", "<s>", "</s>"], 1000, byte_fallback=True)
    tok.pre_tokenizer = None  # Llama 2's tokenizer.json: the normalizer marks spaces, the decoder undoes it
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                       special_tokens=[("<s>", 1)])
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "model_max_length": 4096, "clean_up_tokenization_spaces": False}
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return path


def byte_level_tokenizer(path: Path, special: list[str], roles: dict, chat_template: str | list | None = None,
                         extra_config: dict | None = None) -> Path:
    """Llama 3 / Qwen style: byte-level BPE, the special tokens appended after the learned vocabulary."""
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=700, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32768,
              "clean_up_tokenization_spaces": False, **roles, **(extra_config or {})}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return path
