// hangpt playground: plain JS over the server's OpenAI-compatible API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { config: null, history: [], abort: null, compare: null, attention: null };

// -- helpers ---------------------------------------------------------------------------------
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

async function postJSON(path, body) {
  const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || r.statusText);
  return data;
}

function sampling() {
  const num = (id) => Number($(id).value);
  const stop = $("stop").value.split("\n").filter((s) => s.length > 0);
  return {
    temperature: num("temperature"), max_tokens: num("max_tokens"), top_p: num("top_p"),
    frequency_penalty: num("frequency_penalty"), presence_penalty: num("presence_penalty"),
    valid_utf8: true,
    ...(stop.length ? { stop } : {}),
    ...($("model-menu").value ? { model: $("model-menu").value } : {}),
  };
}

function systemMessages() {
  const system = $("system").value.trim();
  return system ? [{ role: "system", content: system }] : [];
}

// Read an SSE stream of chat chunks; onChunk gets each parsed chunk.
async function streamChat(body, onChunk, signal) {
  const r = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(), body: JSON.stringify({ ...body, stream: true }), signal,
  });
  if (!r.ok) {
    const data = await r.json().catch(() => ({}));
    throw new Error((data.error && data.error.message) || r.statusText);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      onChunk(chunk);
    }
  }
}

// -- tabs and settings -------------------------------------------------------------------------
document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => {
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
  document.querySelectorAll(".panel").forEach((p) => { p.hidden = p.id !== "tab-" + tab.dataset.tab; });
}));

document.querySelectorAll(".slider input").forEach((input) => {
  const out = document.querySelector(`output[data-for="${input.id}"]`);
  const show = () => { out.textContent = input.value; };
  input.addEventListener("input", show);
  show();
});

$("api-key").value = localStorage.getItem("hangpt-api-key") || "";
$("api-key").addEventListener("change", () => localStorage.setItem("hangpt-api-key", $("api-key").value));

async function loadConfig() {
  const r = await fetch("/playground/config");
  const config = await r.json();
  state.config = config;
  $("model-name").textContent = `${config.model} · context ${config.context}`;
  const menu = $("model-menu");  // several models served: requests name the one chosen here
  menu.replaceChildren(...config.models.map((name) => new Option(name, name)));
  menu.hidden = config.models.length < 2;
  $("api-key-box").hidden = !config.api_key_required;
  const max = Math.min(config.max_tokens_limit, config.context - 1);
  $("max_tokens").max = max;
  if (Number($("max_tokens").value) > max) $("max_tokens").value = max;
  $("max_tokens").dispatchEvent(new Event("input"));
  $("compare-n").max = config.max_ranked;
  $("complete-best-of").max = config.max_n;
  if (config.default_system) $("system").placeholder = config.default_system;
}

// -- chat --------------------------------------------------------------------------------------
function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("chat-log").appendChild(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return div;
}

// Colour each piece of an answer by its probability (green likely, red unlikely); hovering shows
// each token's probability and the most likely alternatives.
function showProbabilities(bubble, pieces) {
  const percent = (lp) => `${(100 * Math.exp(lp)).toFixed(1)}%`;
  bubble.textContent = "";
  for (const piece of pieces) {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = piece.text;
    if (piece.tokens.length) {
      const p = Math.exp(piece.tokens.reduce((sum, t) => sum + t.logprob, 0));
      span.dataset.prob = p.toPrecision(3);
      span.style.background = `hsla(${Math.round(120 * p)}, 70%, 50%, 0.25)`;
      span.title = piece.tokens.map((t) => `${JSON.stringify(t.token)} ${percent(t.logprob)}` +
        (t.top_logprobs || []).map((a) => `\n   ${JSON.stringify(a.token)} ${percent(a.logprob)}`).join("")).join("\n");
    }
    bubble.appendChild(span);
  }
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  const last = state.history[state.history.length - 1];
  if (state.abort || !(text || (last && last.role === "user"))) return;  // empty: answer the added turns
  if (text) {
    $("chat-input").value = "";
    addMessage("user", text);
    state.history.push({ role: "user", content: text });
  }
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  let answer = "";
  let finish = null;
  let usage = null;
  const pieces = [];  // the streamed text pieces with the tokens (and log-probabilities) behind each
  let held = [];  // tokens whose text is still held back (half a character, a possible stop string)
  state.abort = new AbortController();
  $("chat-send").disabled = true;
  $("chat-stop").disabled = false;
  try {
    await streamChat(
      { messages: [...systemMessages(), ...state.history], ...sampling(), stream_options: { include_usage: true },
        logprobs: true, top_logprobs: 3 },
      (chunk) => {
        if (chunk.usage) usage = chunk.usage;
        for (const c of chunk.choices) {
          held = held.concat((c.logprobs && c.logprobs.content) || []);
          if (c.delta && c.delta.content) {
            answer += c.delta.content;
            bubble.textContent = answer;
            pieces.push({ text: c.delta.content, tokens: held });
            held = [];
          }
          if (c.finish_reason) finish = c.finish_reason;
        }
        $("chat-log").scrollTop = $("chat-log").scrollHeight;
      },
      state.abort.signal,
    );
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
    finish = finish || "stopped";
  } finally {
    state.abort = null;
    $("chat-send").disabled = false;
    $("chat-stop").disabled = true;
  }
  bubble.classList.remove("streaming");
  showProbabilities(bubble, pieces);
  bubble.classList.add("done");
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `${finish || ""}${usage ? ` · ${usage.completion_tokens} tokens` : ""}`;
  bubble.appendChild(meta);
  state.history.push({ role: "assistant", content: answer });
}

$("chat-form").addEventListener("submit", sendChat);
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("chat-stop").addEventListener("click", () => state.abort && state.abort.abort());
$("chat-add").addEventListener("click", () => {  // write a turn by hand (either role), no answer yet
  const text = $("chat-input").value.trim();
  if (!text || state.abort) return;
  const role = $("chat-role").value;
  $("chat-input").value = "";
  addMessage(role, text).classList.add("added");
  state.history.push({ role, content: text });
});
$("chat-clear").addEventListener("click", () => { state.history = []; $("chat-log").textContent = ""; });

// -- complete: free text ------------------------------------------------------------------------
async function completeText(event) {
  event.preventDefault();
  const box = $("complete-text");
  const prompt = box.value + $("complete-start").value;
  if (!prompt) return;
  const bestOf = Number($("complete-best-of").value) || 1;  // sampled answers; the most likely one is kept
  $("complete-go").disabled = true;
  try {
    const r = await postJSON("/v1/completions", { prompt, ...sampling(), ...(bestOf > 1 ? { best_of: bestOf } : {}) });
    box.value = prompt + r.choices[0].text + $("complete-restart").value;
  } catch (e) {
    showError(e.message);
  } finally {
    $("complete-go").disabled = false;
  }
}

$("complete-form").addEventListener("submit", completeText);

// -- compare and rank --------------------------------------------------------------------------
function renderAnswers(answers) {
  const box = $("compare-answers");
  box.textContent = "";
  answers.forEach((text, i) => {
    const card = document.createElement("div");
    card.className = "answer";
    const select = document.createElement("select");
    select.className = "rank";
    select.setAttribute("aria-label", `rank of answer ${i + 1}`);
    select.innerHTML = answers.map((_, r) => `<option value="${r + 1}">${r + 1}</option>`).join("");
    select.value = String(i + 1);
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    card.append(select, body);
    box.appendChild(card);
  });
}

async function generateAnswers(event) {
  event.preventDefault();
  const prompt = $("compare-input").value.trim();
  if (!prompt) return;
  const n = Math.max(2, Math.min(Number($("compare-n").value) || 2, state.config ? state.config.max_ranked : 16));
  const perRequest = state.config ? state.config.max_n : 8;  // more answers than n allows: several requests
  const params = { ...sampling(), n };
  $("compare-go").disabled = true;
  $("compare-save").disabled = true;
  $("compare-status").textContent = "generating…";
  const answers = new Array(n).fill("");
  renderAnswers(answers);
  const texts = [...document.querySelectorAll("#compare-answers .text")];
  try {
    const requests = [];
    for (let first = 0; first < n; first += perRequest) {
      const part = { ...params, n: Math.min(perRequest, n - first) };
      if (part.seed !== undefined) part.seed += first;
      requests.push(streamChat({ messages: [...systemMessages(), { role: "user", content: prompt }], ...part }, (chunk) => {
        for (const c of chunk.choices) {
          const i = first + c.index;
          if (c.delta && c.delta.content) { answers[i] += c.delta.content; texts[i].textContent = answers[i]; }
        }
      }));
    }
    await Promise.all(requests);
    state.compare = { prompt, system: $("system").value.trim(), answers, params };
    $("compare-save").disabled = false;
    $("compare-status").textContent = "rank the answers (1 = best), then save";
  } catch (e) {
    showError(e.message);
    $("compare-status").textContent = "";
  } finally {
    $("compare-go").disabled = false;
  }
}

async function saveRanking() {
  if (!state.compare) return;
  const ranking = [...document.querySelectorAll("#compare-answers select.rank")].map((s) => Number(s.value) - 1);
  try {
    const saved = await postJSON("/feedback", { ...state.compare, ranking });
    $("compare-status").textContent = `ranking #${saved.id} saved`;
    $("compare-save").disabled = true;
  } catch (e) {
    showError(e.message);
  }
}

$("compare-form").addEventListener("submit", generateAnswers);
$("compare-save").addEventListener("click", saveRanking);

// -- attention ---------------------------------------------------------------------------------
function fillSelect(select, count, allLabel) {
  select.innerHTML = (allLabel ? `<option value="-1">${allLabel}</option>` : "") +
    Array.from({ length: count }, (_, i) => `<option value="${i}">${i}</option>`).join("");
}

function currentWeights() {
  const a = state.attention;
  const layer = a.attentions[Number($("attention-layer").value)];
  const head = Number($("attention-head").value);
  if (head >= 0) return layer[head];
  return layer[0].map((row, i) => row.map((_, j) => layer.reduce((s, h) => s + h[i][j], 0) / layer.length));
}

function drawAttention() {
  const a = state.attention;
  if (!a) return;
  const weights = currentWeights();
  const n = a.tokens.length;
  const canvas = $("attention-canvas");
  const ctx = canvas.getContext("2d");
  const margin = 90;
  const cell = Math.max(6, Math.min(40, Math.floor(560 / n)));
  canvas.width = canvas.height = margin + cell * n + 10;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const w = weights[i][j];
      ctx.fillStyle = `rgba(16, 100, 200, ${Math.sqrt(w)})`;
      ctx.fillRect(margin + j * cell, margin + i * cell, cell - 1, cell - 1);
    }
  }
  ctx.fillStyle = "#333";
  ctx.font = `${Math.min(13, cell)}px sans-serif`;
  const label = (t) => JSON.stringify(t).slice(1, -1).slice(0, 10);
  for (let i = 0; i < n; i++) {
    ctx.textAlign = "right";
    ctx.fillText(label(a.tokens[i]), margin - 4, margin + i * cell + cell * 0.75);
    ctx.save();
    ctx.translate(margin + i * cell + cell * 0.75, margin - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    ctx.fillText(label(a.tokens[i]), 0, 0);
    ctx.restore();
  }
  state.attentionGeometry = { margin, cell, n, weights };
}

$("attention-canvas").addEventListener("mousemove", (e) => {
  const g = state.attentionGeometry;
  if (!g) return;
  const rect = e.target.getBoundingClientRect();
  const scale = e.target.width / rect.width;
  const j = Math.floor(((e.clientX - rect.left) * scale - g.margin) / g.cell);
  const i = Math.floor(((e.clientY - rect.top) * scale - g.margin) / g.cell);
  if (i < 0 || j < 0 || i >= g.n || j >= g.n) return;
  const t = state.attention.tokens;
  $("attention-hover").textContent = `${JSON.stringify(t[i])} attends to ${JSON.stringify(t[j])}: ${g.weights[i][j].toFixed(3)}`;
});

async function showAttention(event) {
  event.preventDefault();
  $("attention-status").textContent = "running…";
  try {
    const a = await postJSON("/inspect/attention", { text: $("attention-input").value });
    state.attention = a;
    fillSelect($("attention-layer"), a.n_layer);
    fillSelect($("attention-head"), a.n_head, "mean of heads");
    $("attention-head").value = "0";
    $("attention-status").textContent = `${a.tokens.length} tokens`;
    $("attention-next").innerHTML = "next token: " + a.top_next.map(
      (t) => `<span>${JSON.stringify(t.token).replace(/</g, "&lt;")} ${(100 * t.prob).toFixed(1)}%</span>`).join("");
    drawAttention();
  } catch (e) {
    $("attention-status").textContent = "";
    showError(e.message);
  }
}

$("attention-form").addEventListener("submit", showAttention);
$("attention-layer").addEventListener("change", drawAttention);
$("attention-head").addEventListener("change", drawAttention);

loadConfig().catch((e) => showError("cannot reach the server: " + e.message));
