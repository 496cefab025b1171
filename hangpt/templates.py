"""Chat templates as data: how a conversation becomes the text (and tokens) a model sees.

A template is stored in the checkpoint's hangpt.json when a model is fine-tuned, so `generate`,
`chat`, `serve`, the reward model and PPO all format prompts exactly the way the model was trained.
A conversation is encoded segment by segment (each role marker, each message on its own), which
keeps the token boundaries identical between training and generation and tells which tokens belong
to the answers (the only tokens the SFT loss is computed on).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .errors import InputError
from .tokenizer import ASSISTANT, SYSTEM, USER

IGNORE_INDEX = -100  # label of tokens that carry no loss (the prompt), as in transformers


@dataclass
class ChatTemplate:
    """`{content}` is the message text; `{eos}` is the tokenizer's end-of-text token."""

    name: str
    system: str  # one system message
    user: str  # one user turn
    assistant_start: str  # what opens the assistant's turn (the generation prompt ends with it)
    assistant_end: str  # what closes it; trained on, so the model learns to stop
    default_system: str = ""  # used when a conversation has no system message
    special_tokens: tuple[str, ...] = ()  # markers the tokenizer must know as single tokens

    def to_dict(self) -> dict:
        d = asdict(self)
        d["special_tokens"] = list(self.special_tokens)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ChatTemplate":
        try:
            return cls(**{**d, "special_tokens": tuple(d.get("special_tokens", ()))})
        except TypeError as e:
            raise InputError(f"hangpt.json: chat_template is malformed ({e})") from None

    # -- text --------------------------------------------------------------------------------
    def segments(self, messages: list[dict], eos: str, add_generation_prompt: bool) -> list[tuple[str, bool]]:
        """(text, is_answer) pieces of the rendered conversation, in order."""
        _check_messages(messages)
        out: list[tuple[str, bool]] = []
        if messages[0]["role"] != "system" and self.default_system:
            out.append((self.system.format(content=self.default_system, eos=eos), False))
        for m in messages:
            role, content = m["role"], m["content"]
            if role == "system":
                out.append((self.system.format(content=content, eos=eos), False))
            elif role == "user":
                out.append((self.user.format(content=content, eos=eos), False))
            else:
                out.append((self.assistant_start.format(eos=eos), False))
                out.append((content, True))
                out.append((self.assistant_end.format(eos=eos), True))
        if add_generation_prompt:
            out.append((self.assistant_start.format(eos=eos), False))
        return [(t, a) for t, a in out if t]

    def render(self, messages: list[dict], eos: str = "<|endoftext|>", add_generation_prompt: bool = False) -> str:
        return "".join(t for t, _ in self.segments(messages, eos, add_generation_prompt))

    # -- tokens ------------------------------------------------------------------------------
    def encode_prompt(self, tokenizer, messages: list[dict]) -> list[int]:
        """Token ids of a conversation up to the opening of the assistant's next turn."""
        return [i for text, _ in self.segments(messages, tokenizer.eos_token or "", True) for i in tokenizer.encode(text)]

    def encode_example(self, tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
        """(input_ids, labels) for training: labels are IGNORE_INDEX except on the assistant's
        answers and their end marker."""
        ids: list[int] = []
        labels: list[int] = []
        for text, is_answer in self.segments(messages, tokenizer.eos_token or "", False):
            piece = tokenizer.encode(text)
            ids.extend(piece)
            labels.extend(piece if is_answer else [IGNORE_INDEX] * len(piece))
        return ids, labels

    def to_jinja(self, eos: str) -> str:
        """The same rendering as a jinja chat template, written to tokenizer_config.json so that
        `AutoTokenizer.apply_chat_template` produces the text this template renders."""

        def parts(fmt: str) -> tuple[str, str]:
            before, _, after = fmt.format(content="\0", eos=eos).partition("\0")
            return json.dumps(before, ensure_ascii=False), json.dumps(after, ensure_ascii=False)

        (sp, ss), (up, us) = parts(self.system), parts(self.user)
        start = json.dumps(self.assistant_start.format(eos=eos), ensure_ascii=False)
        end = json.dumps(self.assistant_end.format(eos=eos), ensure_ascii=False)
        default = json.dumps(self.default_system, ensure_ascii=False)
        return (
            f"{{%- if {default} and messages[0]['role'] != 'system' %}}{{{{ {sp} + {default} + {ss} }}}}{{%- endif %}}"
            "{%- for m in messages %}"
            f"{{%- if m['role'] == 'system' %}}{{{{ {sp} + m['content'] + {ss} }}}}"
            f"{{%- elif m['role'] == 'user' %}}{{{{ {up} + m['content'] + {us} }}}}"
            f"{{%- else %}}{{{{ {start} + m['content'] + {end} }}}}{{%- endif %}}"
            "{%- endfor %}"
            f"{{%- if add_generation_prompt %}}{{{{ {start} }}}}{{%- endif %}}"
        )

    def stop_strings(self, eos: str) -> list[str]:
        """Text that ends an answer even if the model skips the end token (it starts a new turn)."""
        markers = [self.user.split("{content}")[0], self.assistant_end.format(eos=eos)]
        return [m for m in markers if m.strip()]


TEMPLATES = {
    # hangpt's own: role tokens from the tokenizer, the answer ends with <|endoftext|>
    "default": ChatTemplate(
        name="default",
        system=SYSTEM + "{content}\n",
        user=USER + "{content}\n",
        assistant_start=ASSISTANT,
        assistant_end="{eos}",
        special_tokens=(SYSTEM, USER, ASSISTANT),
    ),
    # the KoGPT2 ChatbotData recipe: <usr>question<sys>answer</s>
    "kogpt2": ChatTemplate(
        name="kogpt2",
        system="{content}",
        user="<usr>{content}",
        assistant_start="<sys>",
        assistant_end="{eos}",
        special_tokens=("<usr>", "<sys>"),
    ),
    # the Alpaca-style instruction template KoChatGPT uses (English + Korean preamble)
    "alpaca-ko": ChatTemplate(
        name="alpaca-ko",
        system="{content}\n\n",
        user="### Instruction(명령어):\n{content}\n\n",
        assistant_start="### Response(응답):",
        assistant_end="{eos}\n\n",
        default_system=(
            "Below is an instruction that describes a task.\n아래는 작업을 설명하는 명령어입니다.\n\n"
            "Write a response that appropriately completes the request.\n"
            "명령어에 따른 요청을 적절히 완료하는 응답을 작성하세요."
        ),
    ),
}


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise InputError(f"unknown chat template {name!r}; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def template_for(meta: dict, fallback: str = "default") -> ChatTemplate:
    """The template a checkpoint was fine-tuned with (hangpt.json), else the named fallback."""
    stored = meta.get("chat_template")
    return ChatTemplate.from_dict(stored) if stored else get_template(fallback)


def prepare_tokenizer(template: ChatTemplate, tokenizer, model) -> list[str]:
    """Make the template's markers single tokens, resizing the model's embeddings if any were added."""
    added = tokenizer.add_special_tokens(list(template.special_tokens))
    if tokenizer.vocab_size > model.config.vocab_size:
        model.resize_token_embeddings(tokenizer.vocab_size)
    return added


def fit_conversation(template: ChatTemplate, tokenizer, messages: list[dict], max_tokens: int) -> tuple[list[int], int]:
    """Prompt ids of a conversation cut to at most max_tokens, for a model with a limited context:
    the oldest turns go first (system messages and the last message stay); if the last message
    alone is still too long, only its last tokens are kept. Returns (ids, messages dropped)."""
    kept = list(messages)
    ids = template.encode_prompt(tokenizer, kept)
    dropped = 0
    while len(ids) > max_tokens:
        oldest = next((i for i, m in enumerate(kept[:-1]) if m["role"] != "system"), None)
        if oldest is None:
            return ids[-max_tokens:], dropped
        del kept[oldest]
        dropped += 1
        if oldest < len(kept) - 1 and kept[oldest]["role"] == "assistant":  # its answer goes with it
            del kept[oldest]
            dropped += 1
        ids = template.encode_prompt(tokenizer, kept)
    return ids, dropped


def _check_messages(messages: list[dict]) -> None:
    if not messages:
        raise InputError("a conversation needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise InputError(f"message {i}: role must be system, user or assistant")
        if not isinstance(m.get("content"), str):
            raise InputError(f"message {i}: content must be a string")
