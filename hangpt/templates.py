"""Chat templates: how a conversation becomes the text (and tokens) a model sees.

Two kinds share one interface (render, encode_prompt, encode_example, stop_strings):
- `ChatTemplate`: hangpt's own, as data (default, kogpt2, alpaca-ko, alpaca), stored in the
  checkpoint's hangpt.json when a model is fine-tuned;
- `JinjaTemplate`: the checkpoint's own Jinja `chat_template` (tokenizer_config.json or
  chat_template.jinja), rendered exactly as `tokenizer.apply_chat_template` renders it.
`template_for` picks one, so generate, chat, serve, the reward model, DPO and PPO all format
prompts the way the model was trained.

A conversation is rendered to one string and encoded whole, as the recipes (KoChatGPT, transformers'
`apply_chat_template`) do; the loss covers the tokens that overlap an assistant answer or its end
marker, found from the character spans the renderer reports.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass

from .errors import InputError
from .tokenizer import ASSISTANT, SYSTEM, USER

IGNORE_INDEX = -100  # label of tokens that carry no loss (the prompt), as in transformers

Span = tuple[int, int]  # [start, end) characters of an answer and its end marker


class _Encoder:
    """Tokens from rendered text: encode_prompt / encode_example over `render_spans`."""

    add_special_tokens = True  # let the tokenizer's post-processor add BOS as `tokenizer(text)` does

    def render_spans(self, messages: list[dict], tokenizer, add_generation_prompt: bool) -> tuple[str, list[Span]]:
        raise NotImplementedError

    def render(self, messages: list[dict], tokenizer, add_generation_prompt: bool = False) -> str:
        return self.render_spans(messages, tokenizer, add_generation_prompt)[0]

    def encode_prompt(self, tokenizer, messages: list[dict]) -> list[int]:
        """Token ids of a conversation up to the opening of the assistant's next turn."""
        return tokenizer.encode(self.render(messages, tokenizer, True), self.add_special_tokens)

    def encode_example(self, tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
        """(input_ids, labels) for training: labels are IGNORE_INDEX except on the tokens that
        overlap the assistant's answers and their end markers (the mask apply_chat_template
        returns for `{% generation %}` blocks)."""
        text, spans = self.render_spans(messages, tokenizer, False)
        ids, offsets = tokenizer.encode_with_offsets(text, self.add_special_tokens)
        labels = [i if any(s < b and e > a for a, b in spans) else IGNORE_INDEX for i, (s, e) in zip(ids, offsets)]
        return ids, labels


@dataclass
class ChatTemplate(_Encoder):
    """hangpt's own template. `{content}` is the message text, `{input}` an Alpaca record's input,
    `{eos}`/`{bos}` the tokenizer's end/begin tokens."""

    name: str
    system: str  # one system message
    user: str  # one user turn
    assistant_start: str  # what opens the assistant's turn (the generation prompt ends with it)
    assistant_end: str  # what closes it; trained on, so the model learns to stop
    default_system: str = ""  # used when a conversation has no system message
    special_tokens: tuple[str, ...] = ()  # markers the tokenizer must know as single tokens
    prefix: str = ""  # once, before the conversation (KoGPT2's `<s>`)
    user_with_input: str = ""  # a user turn whose message has an `input` (Alpaca's prompt_input)
    default_system_with_input: str = ""  # the default system text when a user turn has an input

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

    def render_spans(self, messages: list[dict], tokenizer, add_generation_prompt: bool) -> tuple[str, list[Span]]:
        _check_messages(messages)
        v = {"eos": tokenizer.eos_token or "", "bos": tokenizer.bos_token or ""}
        with_input = self.user_with_input and any(m.get("input") for m in messages if m["role"] == "user")
        default = self.default_system_with_input if with_input else self.default_system
        parts = [self.prefix.format(**v)]
        if messages[0]["role"] != "system" and default:
            parts.append(self.system.format(content=default, **v))
        spans = []
        for m in messages:
            if m["role"] == "system":
                parts.append(self.system.format(content=m["content"], **v))
            elif m["role"] == "user" and m.get("input") and self.user_with_input:
                parts.append(self.user_with_input.format(content=m["content"], input=m["input"], **v))
            elif m["role"] == "user":
                parts.append(self.user.format(content=_folded(m), **v))
            else:
                parts.append(self.assistant_start.format(**v))
                start = sum(map(len, parts))
                parts += [m["content"], self.assistant_end.format(**v)]
                spans.append((start, sum(map(len, parts))))
        if add_generation_prompt:
            parts.append(self.assistant_start.format(**v))
        return "".join(parts), spans

    def to_jinja(self) -> str:
        """The same rendering as a Jinja chat template (bos_token/eos_token as variables), written
        to tokenizer_config.json so that `AutoTokenizer.apply_chat_template` renders the same text."""
        content, input_ = "m['content']", "m['input']"
        folded = f"{content} + ('\\n\\n' + m['input'] if m['input'] is defined and m['input'] else '')"
        out = [f"{{{{ {_jinja(self.prefix)} }}}}"] if self.prefix else []
        if self.user_with_input:
            out.append("{%- set ns = namespace(with_input=false) %}{%- for m in messages %}"
                       "{%- if m['role'] == 'user' and m['input'] is defined and m['input'] %}"
                       "{%- set ns.with_input = true %}{%- endif %}{%- endfor %}")
        for default, condition in ((self.default_system_with_input, "ns.with_input and "),
                                   (self.default_system, "not ns.with_input and " if self.user_with_input else "")):
            if default:
                text = _jinja(self.system, content=json.dumps(default, ensure_ascii=False))
                out.append(f"{{%- if {condition}messages[0]['role'] != 'system' %}}{{{{ {text} }}}}{{%- endif %}}")
        user = f"{{{{ {_jinja(self.user, content=folded)} }}}}"
        if self.user_with_input:
            user = (f"{{%- if m['input'] is defined and m['input'] %}}"
                    f"{{{{ {_jinja(self.user_with_input, content=content, input=input_)} }}}}"
                    f"{{%- else %}}{user}{{%- endif %}}")
        out += [
            "{%- for m in messages %}",
            f"{{%- if m['role'] == 'system' %}}{{{{ {_jinja(self.system, content=content)} }}}}",
            f"{{%- elif m['role'] == 'user' %}}{user}",
            f"{{%- else %}}{{{{ {_jinja(self.assistant_start)} + {content} + {_jinja(self.assistant_end)} }}}}{{%- endif %}}",
            "{%- endfor %}",
            f"{{%- if add_generation_prompt %}}{{{{ {_jinja(self.assistant_start)} }}}}{{%- endif %}}",
        ]
        return "".join(out)

    def stop_strings(self, tokenizer) -> list[str]:
        """Text that ends an answer even if the model skips the end token (it starts a new turn)."""
        v = {"eos": tokenizer.eos_token or "", "bos": tokenizer.bos_token or ""}
        markers = [self.user.split("{content}")[0].format(**v), self.assistant_end.format(**v)]
        return [m for m in markers if m.strip()]


def _jinja(fmt: str, **fields: str) -> str:
    """A format string as a Jinja expression: literals quoted, `{eos}`/`{bos}` as the tokenizer's
    variables, other fields as the given expressions."""
    names = {"eos": "eos_token", "bos": "bos_token", **fields}
    pieces = []
    for literal, field, _, _ in string.Formatter().parse(fmt):
        if literal:
            pieces.append(json.dumps(literal, ensure_ascii=False))
        if field is not None:
            pieces.append(names[field])
    return " + ".join(pieces) or '""'


class JinjaTemplate(_Encoder):
    """The checkpoint's own Jinja chat template, rendered as transformers' `apply_chat_template`:
    a sandboxed environment with trim_blocks/lstrip_blocks, `raise_exception`, `strftime_now`,
    a `tojson` that does not escape HTML, and the tokenizer's special tokens as variables."""

    add_special_tokens = False  # apply_chat_template(tokenize=True) adds none: the template writes them
    special_tokens: tuple[str, ...] = ()

    def __init__(self, source: str, name: str = "checkpoint"):
        self.name, self.source = name, source
        self._compiled = _compile_jinja(source)

    def to_dict(self) -> dict:
        return {"name": self.name, "jinja": self.source}

    def render_spans(self, messages: list[dict], tokenizer, add_generation_prompt: bool) -> tuple[str, list[Span]]:
        """The answers are found in the rendered text after the rendering of the conversation
        before them with a generation prompt (the same prefix when the template is prefix-stable),
        each extended over the special token that closes it."""
        _check_messages(messages)
        text = self._render(messages, tokenizer, add_generation_prompt)
        specials = tokenizer.all_special_tokens
        spans, pos = [], 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or not m["content"].strip():
                continue
            if i > 0:
                head = self._render(messages[:i], tokenizer, True)
                pos = max(pos, len(head)) if text.startswith(head) else pos
            content = m["content"]
            start = text.find(content, pos)
            if start < 0:
                content = content.strip()
                start = text.find(content, pos)
            if start < 0:
                raise InputError(f"message {i}: the chat template changes the assistant's text, so the answer "
                                 f"tokens to train on cannot be found")
            end = start + len(content)
            rest = len(text[end:]) - len(text[end:].lstrip())
            marker = next((t for t in specials if text.startswith(t, end + rest)), None)
            if marker:
                end += rest + len(marker)
            spans.append((start, end))
            pos = end
        return text, spans

    def stop_strings(self, tokenizer) -> list[str]:
        """The end marker of an answer and the opening of the next user turn, read from a rendered
        probe conversation; the tokenizer's eos when the template cannot render one."""
        probe = [{"role": "user", "content": "hangpt probe one"}, {"role": "assistant", "content": "hangpt probe two"},
                 {"role": "user", "content": "hangpt probe three"}]
        stops = [tokenizer.eos_token or ""]
        try:
            text, spans = self.render_spans(probe, tokenizer, False)
        except InputError:
            return [s for s in stops if s]
        answer_end = text.index("hangpt probe two") + len("hangpt probe two")
        stops += [text[answer_end : spans[0][1]].strip(), text[spans[0][1] : text.index("hangpt probe three")].strip()]
        return list(dict.fromkeys(s for s in stops if s))

    def _render(self, messages: list[dict], tokenizer, add_generation_prompt: bool) -> str:
        from jinja2.exceptions import TemplateError

        try:
            return self._compiled.render(messages=[_plain(m) for m in messages], tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **tokenizer.special_tokens_map())
        except TemplateError as e:
            raise InputError(f"the model's chat template refused this conversation: {e}") from None


def _compile_jinja(source: str):
    """As transformers compiles chat templates (its `{% generation %}` tag renders its body)."""
    import jinja2
    from datetime import datetime
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise InputError(f"chat template: line {e.lineno}: {e.message}") from None


TEMPLATES = {
    # hangpt's own: role tokens from the tokenizer, the answer ends with the tokenizer's eos
    "default": ChatTemplate(
        name="default",
        system=SYSTEM + "{content}\n",
        user=USER + "{content}\n",
        assistant_start=ASSISTANT,
        assistant_end="{eos}",
        special_tokens=(SYSTEM, USER, ASSISTANT),
    ),
    # the KoGPT2 ChatbotData recipe: <s><usr>question<sys>answer</s>
    "kogpt2": ChatTemplate(
        name="kogpt2",
        system="{content}",
        user="<usr>{content}",
        assistant_start="<sys>",
        assistant_end="{eos}",
        special_tokens=("<usr>", "<sys>"),
        prefix="{bos}",
    ),
    # KoChatGPT's PROMPT_DICT (Alpaca with a Korean line under each English one); the answer ends at eos
    "alpaca-ko": ChatTemplate(
        name="alpaca-ko",
        system="{content}\n\n",
        user="### Instruction(명령어):\n{content}\n\n",
        assistant_start="### Response(응답):",
        assistant_end="{eos}",
        default_system=(
            "Below is an instruction that describes a task.\n아래는 작업을 설명하는 명령어입니다.\n\n"
            "Write a response that appropriately completes the request.\n"
            "명령어에 따른 요청을 적절히 완료하는 응답을 작성하세요."
        ),
        user_with_input="### Instruction(명령어):\n{content}\n\n### Input(입력):\n{input}\n\n",
        default_system_with_input=(
            "Below is an instruction that describes a task, paired with an input that provides further context.\n"
            "아래는 작업을 설명하는 명령어와 추가적 맥락을 제공하는 입력이 짝을 이루는 예제입니다.\n\n"
            "Write a response that appropriately completes the request.\n요청을 적절히 완료하는 응답을 작성하세요."
        ),
    ),
    # Stanford Alpaca's PROMPT_DICT
    "alpaca": ChatTemplate(
        name="alpaca",
        system="{content}\n\n",
        user="### Instruction:\n{content}\n\n",
        assistant_start="### Response:",
        assistant_end="{eos}",
        default_system=("Below is an instruction that describes a task. "
                        "Write a response that appropriately completes the request."),
        user_with_input="### Instruction:\n{content}\n\n### Input:\n{input}\n\n",
        default_system_with_input=("Below is an instruction that describes a task, paired with an input that "
                                   "provides further context. Write a response that appropriately completes the request."),
    ),
}


def get_template(name: str) -> ChatTemplate:
    if name not in TEMPLATES:
        raise InputError(f"unknown chat template {name!r}; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def template_for(meta: dict, tokenizer=None, name: str | None = None) -> ChatTemplate | JinjaTemplate:
    """The template to format a checkpoint's conversations with, the first that applies: a hangpt
    template named explicitly; the one it was fine-tuned with (hangpt.json); the tokenizer's own
    Jinja chat_template; hangpt's "default"."""
    if name:
        return get_template(name)
    stored = meta.get("chat_template")
    if stored:
        return JinjaTemplate(stored["jinja"], stored.get("name", "checkpoint")) if "jinja" in stored \
            else ChatTemplate.from_dict(stored)
    source = tokenizer.default_chat_template() if tokenizer is not None else None
    return JinjaTemplate(source) if source else get_template("default")


def prepare_tokenizer(template, tokenizer, model) -> list[str]:
    """Make the template's markers single tokens, resizing the model's embeddings if any were added,
    and give the tokenizer the template's Jinja form so `AutoTokenizer.apply_chat_template` matches
    (a checkpoint's own Jinja template is kept as it came)."""
    added = tokenizer.add_special_tokens(list(template.special_tokens))
    if tokenizer.vocab_size > model.config.vocab_size:
        model.resize_token_embeddings(tokenizer.vocab_size)
    if isinstance(template, ChatTemplate):
        tokenizer.chat_template = template.to_jinja()
    return added


def fit_conversation(template, tokenizer, messages: list[dict], max_tokens: int) -> tuple[list[int], int]:
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


def _folded(m: dict) -> str:
    """A user message's text with its Alpaca `input` (if any) below it, for templates without an input slot."""
    return m["content"] + ("\n\n" + m["input"] if m.get("input") else "")


def _plain(m: dict) -> dict:
    """A message as a Jinja template sees it: an Alpaca `input` folded into the content."""
    return {k: v for k, v in {**m, "content": _folded(m)}.items() if k != "input" and v is not None}


def _check_messages(messages: list[dict]) -> None:
    if not messages:
        raise InputError("a conversation needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise InputError(f"message {i}: role must be system, user or assistant")
        if not isinstance(m.get("content"), str):
            raise InputError(f"message {i}: content must be a string")
