"""Chat formatting as the recipes and the model authors meant it: KoGPT2's `<s><usr>Q<sys>A</s>`,
KoChatGPT's Alpaca prompts encoded whole, and a checkpoint's own Jinja chat_template rendered and
tokenized exactly as transformers' `apply_chat_template` does."""

from __future__ import annotations

import json

import pytest

from hangpt.cli import main
from hangpt.templates import IGNORE_INDEX, JinjaTemplate, get_template, template_for
from hangpt.tokenizer import Tokenizer
from tokenizer_folders import byte_level_tokenizer, kogpt2_folder, llama2_tokenizer

transformers = pytest.importorskip("transformers")

LLAMA3 = """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN25 = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}{% generation %}{{ message.content + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- endif %}
{%- endfor %}
"""


def _llama3(path):
    return byte_level_tokenizer(path, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                       "<|end_header_id|>", "<|eot_id|>"],
                                {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, LLAMA3)


def _qwen(path):
    return byte_level_tokenizer(path, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, QWEN25)


def _mistral(path):
    return llama2_tokenizer(path, chat_template=MISTRAL)


FOLDERS = {"llama3": _llama3, "qwen2.5": _qwen, "mistral": _mistral}
TURNS = [{"role": "user", "content": "안녕하세요 오늘 날씨가 어때요?"},
         {"role": "assistant", "content": "오늘 날씨가 정말 좋네요."},
         {"role": "user", "content": "주말에 뭐 해요?"},
         {"role": "assistant", "content": "친구와 영화를 봤어요 😀"}]
SYSTEM = [{"role": "system", "content": "짧게 답하세요."}]


@pytest.mark.parametrize("family", FOLDERS)
@pytest.mark.parametrize("system", [False, True])
def test_jinja_template_matches_apply_chat_template(tmp_path, family, system):
    folder = FOLDERS[family](tmp_path / family)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    tok = Tokenizer.load(folder)
    template = template_for({}, tok)
    assert isinstance(template, JinjaTemplate)
    head = SYSTEM if system else []
    for n in (1, 2, 3, 4):
        messages = head + TURNS[:n]
        for gen in (False, True):
            text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert template.render(messages, tok, gen) == text
        if messages[-1]["role"] == "user":
            assert template.encode_prompt(tok, messages) == \
                hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        else:
            ids, labels = template.encode_example(tok, messages)
            assert ids == hf.apply_chat_template(messages, tokenize=True, return_dict=False)
            answers = tok.decode([i for i in labels if i != IGNORE_INDEX])
            expected_end = {"llama3": "<|eot_id|>", "qwen2.5": "<|im_end|>", "mistral": "</s>"}[family]
            said = [m["content"] for m in messages if m["role"] == "assistant"]
            assert answers.replace(" ", "") == "".join(s + expected_end for s in said).replace(" ", "")


def test_assistant_labels_equal_transformers_generation_mask(tmp_path):
    """Qwen's template marks answers with {% generation %}: our labels are transformers' assistant mask."""
    folder = _qwen(tmp_path / "qwen")
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    tok = Tokenizer.load(folder)
    for messages in (TURNS, SYSTEM + TURNS, TURNS[:2]):
        out = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, labels = template_for({}, tok).encode_example(tok, messages)
        assert ids == out["input_ids"]
        assert [int(label != IGNORE_INDEX) for label in labels] == out["assistant_masks"]


def test_stop_strings_of_a_jinja_template(tmp_path):
    tok = Tokenizer.load(_qwen(tmp_path / "qwen"))
    assert template_for({}, tok).stop_strings(tok) == ["<|im_end|>", "<|im_start|>user"]
    tok = Tokenizer.load(_llama3(tmp_path / "llama3"))
    assert template_for({}, tok).stop_strings(tok) == ["<|eot_id|>", "<|start_header_id|>user<|end_header_id|>"]


def test_which_template_wins(tmp_path):
    tok = Tokenizer.load(_qwen(tmp_path / "qwen"))
    assert template_for({}, tok).source == QWEN25  # the folder's own
    assert template_for({}, tok, "kogpt2").name == "kogpt2"  # named explicitly
    stored = {"chat_template": get_template("alpaca-ko").to_dict()}
    assert template_for(stored, tok).name == "alpaca-ko"  # what the checkpoint was fine-tuned with
    jinja = {"chat_template": JinjaTemplate(MISTRAL).to_dict()}
    assert template_for(jinja, tok).source == MISTRAL
    plain = Tokenizer.load(kogpt2_folder(tmp_path / "kogpt2"))
    assert template_for({}, plain).name == "default"


def test_named_template_list_and_errors(tmp_path):
    folder = _qwen(tmp_path / "qwen")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": QWEN25}, {"name": "tool_use", "template": "{{ 1 }}"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.load(folder)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    assert template_for({}, tok).render(TURNS, tok) == hf.apply_chat_template(TURNS, tokenize=False)
    tok.save(tmp_path / "qwen")  # written back as the list it was
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == config["chat_template"]
    from hangpt.errors import InputError

    mistral_tok = Tokenizer.load(_mistral(tmp_path / "mistral"))
    with pytest.raises(InputError, match="roles must alternate"):
        template_for({}, mistral_tok).render([TURNS[0], TURNS[0]], mistral_tok)
    with pytest.raises(InputError, match="chat template: line 1"):
        JinjaTemplate("{% if %}")


def test_kogpt2_template_is_the_notebook_formula(tmp_path):
    """[bos] + [usr] + tok(Q) + [sys] + tok(A) + [eos], in training and at generation."""
    tok = Tokenizer.load(kogpt2_folder(tmp_path / "kogpt2"))
    template = get_template("kogpt2")
    q, a = "오늘 날씨가 정말 좋네요", "주말에 친구와 영화를 봤어요"
    bos, usr, sys_, eos = (tok.token_to_id(t) for t in ("<s>", "<usr>", "<sys>", "</s>"))
    messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    ids, labels = template.encode_example(tok, messages)
    assert ids == [bos, usr] + tok.encode(q) + [sys_] + tok.encode(a) + [eos]
    assert labels == [IGNORE_INDEX] * (len(ids) - len(tok.encode(a)) - 1) + tok.encode(a) + [eos]
    assert template.encode_prompt(tok, messages[:1]) == [bos, usr] + tok.encode(q) + [sys_]
    assert template.render(messages, tok) == f"<s><usr>{q}<sys>{a}</s>"


# KoChatGPT's PROMPT_DICT and SFT construction: sources formatted, targets = output + eos, the whole
# string encoded, labels -100 over len(tokenizer(source)).
PROMPT_DICT = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context.\n"
        "아래는 작업을 설명하는 명령어와 추가적 맥락을 제공하는 입력이 짝을 이루는 예제입니다.\n\n"
        "Write a response that appropriately completes the request.\n요청을 적절히 완료하는 응답을 작성하세요.\n\n"
        "### Instruction(명령어):\n{prompt}\n\n### Input(입력):\n{input}\n\n### Response(응답):"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task.\n"
        "아래는 작업을 설명하는 명령어입니다.\n\n"
        "Write a response that appropriately completes the request.\n명령어에 따른 요청을 적절히 완료하는 응답을 작성하세요.\n\n"
        "### Instruction(명령어):\n{prompt}\n\n### Response(응답):"
    ),
}


def _kochatgpt(tok, example):
    key = "prompt_input" if example.get("input", "") != "" else "prompt_no_input"
    source = PROMPT_DICT[key].format_map(example)
    ids = tok.encode(source + example["completion"] + tok.eos_token)
    n_source = len(tok.encode(source))
    return ids, [IGNORE_INDEX] * n_source + ids[n_source:]


@pytest.mark.parametrize("kind", ["sentencepiece", "byte-level"])
def test_alpaca_ko_equals_kochatgpt_construction(tmp_path, kind, tiny_tokenizer):
    tok = Tokenizer.load(kogpt2_folder(tmp_path / "k")) if kind == "sentencepiece" else tiny_tokenizer
    template = get_template("alpaca-ko")
    for example in ({"prompt": "불고기용 고기 한우에요?", "completion": "네, 한우입니다."},
                    {"prompt": "다음 문장을 요약하세요", "input": "오늘 날씨가 정말 좋네요. 주말에 친구와 영화를 봤어요.",
                     "completion": "날씨 좋은 주말에 영화를 봤다."}):
        user = {"role": "user", "content": example["prompt"], **({"input": example["input"]} if "input" in example else {})}
        messages = [user, {"role": "assistant", "content": example["completion"]}]
        ids, labels = template.encode_example(tok, messages)
        assert (ids, labels) == _kochatgpt(tok, example)
        assert labels[-1] == tok.eos_id  # nothing after the end token
        key = "prompt_input" if "input" in example else "prompt_no_input"
        assert template.encode_prompt(tok, [user]) == tok.encode(PROMPT_DICT[key].format_map(example))


def test_alpaca_file_trains_and_the_jinja_folder_fine_tunes(tmp_path, capsys, tiny_checkpoint):
    """Alpaca's own {instruction, input, output} JSON trains with the alpaca-ko template; a folder
    with its own chat_template fine-tunes with it and keeps it."""
    records = [{"instruction": "요약하세요", "input": "오늘 날씨가 정말 좋네요.", "output": "날씨가 좋다."},
               {"instruction": "인사해 주세요", "input": "", "output": "안녕하세요!"}] * 3
    (tmp_path / "alpaca.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    base = tmp_path / "qwen"
    _qwen(base)
    config = transformers.GPT2Config(vocab_size=Tokenizer.load(base).vocab_size, n_positions=128, n_embd=16,
                                     n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(base)
    for model, out, extra in ((tiny_checkpoint, "alpaca", ["--template", "alpaca-ko"]), (base, "jinja", [])):
        with pytest.raises(SystemExit) as e:
            main(["sft", "--model", str(model), "--data", str(tmp_path / "alpaca.json"), "--out", str(tmp_path / out),
                  "--max-steps", "2", "--batch-size", "2", "--json", *extra])
        assert e.value.code == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["steps"] == 2
    meta = json.loads((tmp_path / "alpaca" / "hangpt.json").read_text())
    assert meta["chat_template"]["name"] == "alpaca-ko"
    meta = json.loads((tmp_path / "jinja" / "hangpt.json").read_text())
    assert meta["chat_template"] == {"name": "checkpoint", "jinja": QWEN25}
    saved = json.loads((tmp_path / "jinja" / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == QWEN25
