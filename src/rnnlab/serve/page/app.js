// The rnnlab page: plain JavaScript against the server's /v1 API, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];
let controller = null;

function headers() {
  const h = { "content-type": "application/json" };
  const token = $("token").value || localStorage.getItem("rnnlab-token") || "";
  if (token) h.authorization = "Bearer " + token;
  return h;
}

async function post(path, body) {
  const response = await fetch(path, { method: "POST", headers: headers(),
                                       body: JSON.stringify(body) });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function status(id, text, error) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", !!error);
}

function current() {
  return models.find((m) => m.name === $("model").value);
}

function showSections() {
  const m = current();
  for (const section of document.querySelectorAll("section")) {
    const fits = m && section.dataset.task === m.task &&
      (!section.dataset.level || section.dataset.level === m.level);
    section.hidden = !fits;
  }
  $("model-info").textContent = m ? `${m.task}, ${m.level}, ${m.cell} ${m.layers}×${m.hidden_size}` +
    (m.quantized ? ", int8" : "") : "";
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error);
    models = data.models;
  } catch (err) {
    status("sample-status", "could not list the models: " + err.message, true);
    return;
  }
  $("model").innerHTML = "";
  for (const m of models) {
    const option = document.createElement("option");
    option.value = option.textContent = m.name;
    $("model").appendChild(option);
  }
  showSections();
}

// --- playground: the sample arrives as server-sent events over a streamed fetch ---------------

function number(id) {
  const value = $(id).value;
  return value === "" ? null : Number(value);
}

async function generate() {
  const body = { model: $("model").value, prompt: $("prompt").value, stream: true,
                 temperature: number("temperature"), top_k: number("top_k"),
                 top_p: number("top_p"), max_tokens: number("max_tokens") };
  if (number("seed") !== null) body.seed = number("seed");
  const m = current();
  const out = $("sample");
  out.textContent = body.prompt + (body.prompt && m.level === "word" ? " " : "");
  status("sample-status", "generating…");
  controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  let count = 0;
  try {
    const response = await fetch("/v1/generate", { method: "POST", headers: headers(),
                                                   body: JSON.stringify(body),
                                                   signal: controller.signal });
    if (!response.ok) throw new Error((await response.json()).error);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, end).replace(/^data: /, "");
        buffer = buffer.slice(end + 2);
        const event = JSON.parse(line);
        if (event.error) throw new Error(event.error);
        if (event.text !== undefined) {
          out.textContent += event.text;
          count += 1;
          out.dataset.tokens = count;
        }
      }
    }
    status("sample-status", `${count} tokens`);
  } catch (err) {
    if (err.name === "AbortError") status("sample-status", `stopped after ${count} tokens`);
    else status("sample-status", err.message, true);
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

// --- surprisal --------------------------------------------------------------------------------

function heat(value, max) { // 0 -> white, max -> red
  const t = Math.max(0, Math.min(1, value / max));
  return `rgb(255, ${Math.round(255 - 200 * t)}, ${Math.round(255 - 200 * t)})`;
}

async function score() {
  status("score-status", "scoring…");
  try {
    const data = await post("/v1/score", { model: $("model").value, text: $("score-text").value,
                                           top: 5 });
    const box = $("scored");
    box.innerHTML = "";
    const word = current().level === "word";
    for (const t of data.tokens) {
      const span = document.createElement("span");
      const surprisal = -t.logprob / Math.LN2;
      span.textContent = t.token === "\n" ? "⏎\n" : t.token + (word ? " " : "");
      span.style.background = heat(surprisal, 12);
      span.title = `${surprisal.toFixed(2)} bits\n` +
        t.top.map(([tok, lp]) => `${JSON.stringify(tok)}  p=${Math.exp(lp).toFixed(3)}`).join("\n");
      box.appendChild(span);
    }
    status("score-status", `${data.count} tokens, perplexity ${data.ppl.toFixed(2)}` +
      (data.unknown ? `, ${data.unknown} unknown` : ""));
  } catch (err) {
    status("score-status", err.message, true);
  }
}

// --- hidden units -----------------------------------------------------------------------------

function diverging(v) { // -1 blue, 0 white, +1 red
  const t = Math.max(-1, Math.min(1, v));
  const fade = Math.round(255 - 200 * Math.abs(t));
  return t >= 0 ? `rgb(255, ${fade}, ${fade})` : `rgb(${fade}, ${fade}, 255)`;
}

async function activate() {
  status("act-status", "reading…");
  try {
    const units = $("units").value.split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    const data = await post("/v1/activations", { model: $("model").value,
                                                 text: $("act-text").value, units,
                                                 layer: number("layer") });
    const rows = $("act-rows");
    rows.innerHTML = "";
    for (const [unit, values] of Object.entries(data.units)) {
      const row = document.createElement("div");
      row.className = "act";
      row.innerHTML = `<b>unit ${unit}</b>`;
      data.tokens.forEach((tok, i) => {
        const span = document.createElement("span");
        span.textContent = tok === "\n" ? "⏎" : tok;
        span.style.background = diverging(values[i]);
        span.title = values[i].toFixed(3);
        row.appendChild(span);
      });
      rows.appendChild(row);
    }
    status("act-status", `layer ${data.layer} of ${data.layers}, ${data.hidden_size} units`);
  } catch (err) {
    status("act-status", err.message, true);
  }
}

// --- classifier -------------------------------------------------------------------------------

async function classify() {
  status("classify-status", "classifying…");
  try {
    const texts = $("classify-text").value.split("\n").filter((t) => t.trim());
    const data = await post("/v1/classify", { model: $("model").value, texts });
    const box = $("classified");
    box.innerHTML = "";
    data.results.forEach((result, i) => {
      const block = document.createElement("div");
      const title = document.createElement("p");
      title.textContent = `${texts[i]} → ${result.label ?? result.error}`;
      block.appendChild(title);
      for (const [label, p] of Object.entries(result.probs || {})) {
        const row = document.createElement("div");
        row.className = "label-row";
        row.innerHTML = `<span></span><i class="bar"></i> ${(100 * p).toFixed(1)}%`;
        row.firstChild.textContent = label;
        row.querySelector(".bar").style.width = `${Math.round(300 * p)}px`;
        block.appendChild(row);
      }
      box.appendChild(block);
    });
    status("classify-status", "");
  } catch (err) {
    status("classify-status", err.message, true);
  }
}

$("model").addEventListener("change", showSections);
$("token").addEventListener("change", () => {
  localStorage.setItem("rnnlab-token", $("token").value);
  loadModels();
});
$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("score").addEventListener("click", score);
$("activate").addEventListener("click", activate);
$("classify").addEventListener("click", classify);
loadModels();
