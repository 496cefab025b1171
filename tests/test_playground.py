"""The playground in a real browser (Playwright driving the system Chromium): a streamed chat
answer, and compare mode whose ranking lands in SQLite and exports as preference pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_serve_support import running_server

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the system Chromium at /usr/bin/chromium "
                                                               "(apt-get install chromium)")


@pytest.fixture(scope="module")
def page(tiny_checkpoint, tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install playwright)")
    db = tmp_path_factory.mktemp("playground") / "feedback.sqlite"
    with running_server(tiny_checkpoint, feedback_db=db) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url + "/")
        page.wait_for_function("document.querySelector('#model-name').textContent.includes('tiny')")
        page.db = db
        yield page
        browser.close()


def _set_slider(page, slider: str, value) -> None:
    page.eval_on_selector(f"#{slider}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def test_chat_streams_an_answer(page):
    requests = []
    page.on("request", lambda r: requests.append(r.post_data or "") if r.url.endswith("/v1/chat/completions") else None)
    _set_slider(page, "max_tokens", 12)
    _set_slider(page, "temperature", 0)
    page.fill("#system", "친절한 도우미입니다.")
    page.fill("#chat-input", "안녕하세요? 오늘 날씨 어때요?")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".msg.assistant.done", timeout=60_000)
    assert page.inner_text(".msg.user") == "안녕하세요? 오늘 날씨 어때요?"
    answer = page.inner_text(".msg.assistant .meta")
    assert "tokens" in answer  # the usage chunk of the stream arrived
    assert requests and '"stream":true' in requests[0] and '"max_tokens":12' in requests[0]
    # each piece of the answer carries its probability: a colour, and the tokens on hover
    pieces = page.eval_on_selector_all(".msg.assistant .tok", "els => els.map(e => [e.textContent, e.dataset.prob, e.title])")
    assert pieces and "".join(text for text, _, _ in pieces) == page.inner_text(".msg.assistant").rsplit("\n", 1)[0]
    assert all(0 < float(prob) <= 1 and "%" in title for _, prob, title in pieces)


def test_added_messages_are_sent_in_order(page):
    import json

    requests = []
    page.on("request", lambda r: requests.append(r.post_data) if r.url.endswith("/v1/chat/completions") else None)
    page.click("#chat-clear")
    _set_slider(page, "max_tokens", 4)
    for role, text in (("user", "첫 질문"), ("assistant", "손으로 쓴 답"), ("user", "둘째 질문")):
        page.select_option("#chat-role", role)
        page.fill("#chat-input", text)
        page.click("#chat-add")
    assert page.eval_on_selector_all(".msg.added", "els => els.map(e => e.className)") == [
        "msg user added", "msg assistant added", "msg user added"]
    assert not requests  # adding writes turns; nothing is generated yet
    page.click("#chat-send")  # empty input: answer the conversation as written
    page.wait_for_selector(".msg.assistant.done", timeout=60_000)
    sent = json.loads(requests[0])["messages"]
    assert sent == [{"role": "system", "content": "친절한 도우미입니다."}, {"role": "user", "content": "첫 질문"}, {"role": "assistant", "content": "손으로 쓴 답"},
                    {"role": "user", "content": "둘째 질문"}]


def test_completion_tab_injects_start_and_restart_text_with_best_of(page):
    import json

    page.click("button[data-tab=complete]")
    _set_slider(page, "max_tokens", 6)
    _set_slider(page, "temperature", 1)
    page.fill("#complete-text", "오늘 날씨가")
    page.fill("#complete-start", " 정말")
    page.fill("#complete-restart", "\n다음:")
    page.fill("#complete-best-of", "3")
    with page.expect_response(lambda r: r.url.endswith("/v1/completions"), timeout=60_000) as response:
        page.click("#complete-go")
    sent = json.loads(response.value.request.post_data)
    assert sent["prompt"] == "오늘 날씨가 정말" and sent["best_of"] == 3 and sent["max_tokens"] == 6
    page.wait_for_function("document.querySelector('#complete-text').value.endsWith('다음:')", timeout=60_000)
    text = response.value.json()["choices"][0]["text"]
    assert page.input_value("#complete-text") == "오늘 날씨가 정말" + text + "\n다음:"
    page.click("button[data-tab=chat]")


def test_compare_rank_save_and_export(page, tmp_path):
    from hangpt.data.preferences import read_preferences
    from hangpt.serve.feedback import FeedbackStore, export_pairs

    page.click("button[data-tab=compare]")
    _set_slider(page, "max_tokens", 10)
    _set_slider(page, "temperature", 1.5)
    page.fill("#compare-input", "주말에 뭐 할까요?")
    page.fill("#compare-n", "3")
    page.click("#compare-go")
    page.wait_for_selector("#compare-save:not([disabled])", timeout=60_000)
    answers = page.eval_on_selector_all("#compare-answers .text", "els => els.map(e => e.textContent)")
    assert len(answers) == 3
    page.select_option("#compare-answers .answer:nth-child(1) select", "3")  # the person's ranking
    page.select_option("#compare-answers .answer:nth-child(2) select", "1")
    page.select_option("#compare-answers .answer:nth-child(3) select", "2")
    page.click("#compare-save")
    page.wait_for_function("document.querySelector('#compare-status').textContent.includes('saved')")

    [stored] = FeedbackStore(page.db).rankings()
    assert stored["prompt"] == "주말에 뭐 할까요?" and stored["system"] == "친절한 도우미입니다."
    assert stored["answers"] == answers and stored["ranks"] == [2, 0, 1]
    summary = export_pairs(page.db, tmp_path / "prefs.jsonl")
    pairs = read_preferences(tmp_path / "prefs.jsonl")
    assert summary["pairs"] == len(pairs) >= 1
    if len(set(answers)) == 3:  # sampled answers are almost always distinct; equal texts give no pair
        assert {(p.chosen, p.rejected) for p in pairs} == {(answers[1], answers[2]), (answers[1], answers[0]),
                                                           (answers[2], answers[0])}


def test_sixteen_answers_are_ranked_saved_and_exported(page, tmp_path):
    from hangpt.serve.feedback import FeedbackStore, export_pairs

    page.click("button[data-tab=compare]")
    _set_slider(page, "max_tokens", 4)
    _set_slider(page, "temperature", 1.5)
    page.fill("#compare-input", "무엇을 먹을까요?")
    page.fill("#compare-n", "16")  # two requests of n=8 (the server's --max-n)
    page.click("#compare-go")
    page.wait_for_selector("#compare-save:not([disabled])", timeout=120_000)
    answers = page.eval_on_selector_all("#compare-answers .text", "els => els.map(e => e.textContent)")
    assert len(answers) == 16 and all(answers)
    page.select_option("#compare-answers .answer:nth-child(1) select", "16")  # first and last swap places
    page.select_option("#compare-answers .answer:nth-child(16) select", "1")
    page.click("#compare-save")
    page.wait_for_function("document.querySelector('#compare-status').textContent.includes('saved')")
    stored = list(FeedbackStore(page.db).rankings())[-1]
    assert stored["prompt"] == "무엇을 먹을까요?" and stored["answers"] == answers
    assert stored["ranks"] == [15, *range(1, 15), 0]
    summary = export_pairs(page.db, tmp_path / "prefs.jsonl")
    distinct = len(set(answers))
    assert summary["rankings"] >= 1 and summary["pairs"] >= distinct * (distinct - 1) // 2 > 0


def test_attention_page_draws_a_heatmap(page):
    page.click("button[data-tab=attention]")
    page.fill("#attention-input", "오늘 날씨가 정말 좋네요.")
    page.click("#attention-form button[type=submit]")
    page.wait_for_function("document.querySelector('#attention-status').textContent.includes('tokens')")
    assert page.eval_on_selector_all("#attention-layer option", "els => els.length") == 2
    assert page.eval_on_selector_all("#attention-head option", "els => els.length") == 5  # 4 heads + mean
    drawn = page.eval_on_selector("#attention-canvas", "c => c.width > 100")
    assert drawn
    page.select_option("#attention-head", "-1")
    assert "next token" in page.inner_text("#attention-next")


def test_model_menu_picks_the_model_of_each_request(page, tiny_checkpoint):
    with running_server({"tiny": tiny_checkpoint, "other": tiny_checkpoint}) as url:
        menu_page = page.context.browser.new_page()  # the module's browser: one Playwright at a time
        menu_page.goto(url + "/")
        menu_page.wait_for_function("document.querySelectorAll('#model-menu option').length === 2")
        assert menu_page.is_visible("#model-menu")
        menu_page.select_option("#model-menu", "other")
        requests = []
        menu_page.on("request", lambda r: requests.append(r.post_data or "")
                     if r.url.endswith("/v1/chat/completions") else None)
        _set_slider(menu_page, "max_tokens", 4)
        menu_page.fill("#chat-input", "안녕하세요?")
        menu_page.press("#chat-input", "Enter")
        menu_page.wait_for_selector(".msg.assistant.done", timeout=60_000)
        menu_page.close()
    assert requests and '"model":"other"' in requests[0]
    assert not page.is_visible("#model-menu")  # one model served: no menu
