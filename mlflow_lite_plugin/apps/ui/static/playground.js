// Prompt playground: a model (or two side by side), a free prompt or a template with its
// variables, parameters, tags and validation rules; answers stream in via SSE.
import { api, el, parseTags, seconds, sse, usd } from "./util.js";

const $ = (id) => document.getElementById(id);
let currentTemplate = null; // the loaded template's details, or null for a free prompt

export function init(config) {
  $("model").value = config.default_model;
  $("compare").addEventListener("change", () => {
    $("model-b-label").hidden = !$("compare").checked;
    $("out-b").hidden = !$("compare").checked;
    $("outputs").classList.toggle("compare", $("compare").checked);
  });
  $("template").addEventListener("change", loadTemplate);
  $("run-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  for (const pane of ["out-a", "out-b"]) resetPane(pane, "");
}

export function show() {}

async function loadTemplate() {
  const name = $("template").value.trim();
  const box = $("variables");
  box.replaceChildren();
  $("run-error").hidden = true;
  currentTemplate = null;
  $("prompt-label").hidden = false;
  if (!name) {
    $("system").value = "";
    return;
  }
  try {
    currentTemplate = await api(`template?name=${encodeURIComponent(name)}`);
  } catch (error) {
    showError(error.message);
    return;
  }
  $("prompt-label").hidden = true;
  $("system").value = currentTemplate.system || "";
  box.append(el("p", { class: "muted" }, `${currentTemplate.source} template ${currentTemplate.name} v${currentTemplate.version}`));
  for (const variable of currentTemplate.variables) {
    const hint = variable.default !== null ? `default: ${JSON.stringify(variable.default)}`
      : variable.json ? 'JSON, e.g. ["billing", "bug", "other"]' : "";
    box.append(el("label", {}, variable.name,
      el("textarea", { rows: variable.json ? 1 : 3, "data-variable": variable.name, placeholder: hint })));
  }
}

function request(model) {
  const body = {
    model,
    system: $("system").value,
    cache: $("use-cache").checked,
    tags: parseTags($("tags").value),
  };
  if (currentTemplate) {
    body.template = $("template").value.trim();
    body.variables = {};
    for (const field of document.querySelectorAll("[data-variable]")) body.variables[field.dataset.variable] = field.value;
  } else {
    body.prompt = $("prompt").value;
  }
  for (const [id, key, parse] of [["temperature", "temperature", parseFloat], ["max-tokens", "max_tokens", parseInt], ["top-p", "top_p", parseFloat]]) {
    if ($(id).value !== "") body[key] = parse($(id).value);
  }
  const rules = $("validation").value.trim();
  if (rules) body.validation = JSON.parse(rules); // a SyntaxError is shown by run()
  return body;
}

function showError(message) {
  $("run-error").textContent = message;
  $("run-error").hidden = !message;
}

async function run() {
  showError("");
  const models = [$("model").value.trim()];
  if ($("compare").checked) models.push($("model-b").value.trim());
  let bodies;
  try {
    bodies = models.map(request);
  } catch (error) {
    showError(`Validation rules: ${error.message}`);
    return;
  }
  $("run").disabled = true;
  try {
    await Promise.all(bodies.map((body, i) => runOne(i === 0 ? "out-a" : "out-b", body)));
  } finally {
    $("run").disabled = false;
  }
}

function resetPane(id, model) {
  const pane = $(id);
  pane.replaceChildren(
    el("h3", {}, el("span", { class: "model" }, model || (id === "out-a" ? "Answer" : "Model B")), el("span", { class: "muted status" })),
    el("pre", { class: "output" }),
    el("div", { class: "stats" }),
  );
  return pane;
}

async function runOne(id, body) {
  const pane = resetPane(id, body.model);
  const output = pane.querySelector(".output");
  const status = pane.querySelector(".status");
  const stats = pane.querySelector(".stats");
  status.textContent = "running…";
  pane.dataset.state = "running";
  try {
    await sse("run", body, (event, data) => {
      if (event === "chunk") output.textContent += data.text;
      else if (event === "done") {
        renderStats(stats, data);
        status.textContent = "done";
        pane.dataset.state = "done";
      } else if (event === "error") {
        stats.replaceChildren(el("span", { class: "error" }, `${data.type}: ${data.message}`),
          data.trace_id ? traceLink(data.trace_id) : null);
        status.textContent = "failed";
        pane.dataset.state = "error";
      }
    });
  } catch (error) {
    stats.replaceChildren(el("span", { class: "error" }, error.message));
    status.textContent = "failed";
    pane.dataset.state = "error";
  }
}

function traceLink(traceId) {
  return el("a", { class: "trace-link", href: `#/traces/${encodeURIComponent(traceId)}` }, "open trace");
}

function renderStats(stats, data) {
  const usage = data.usage || {};
  const items = [
    ["model", data.model],
    ["tokens", `${usage.prompt_tokens ?? 0} in / ${usage.completion_tokens ?? 0} out`],
    ["cost", usd(data.cost)],
    ["latency", seconds(data.latency)],
  ];
  if (data.first_token_latency !== null) items.push(["first token", seconds(data.first_token_latency)]);
  items.push(["cache", data.cached || "miss"]);
  stats.replaceChildren(...items.map(([label, value]) => el("span", { class: `stat-${label.replace(" ", "-")}` }, `${label}: `, el("b", {}, value))));
  if (data.validation) {
    const v = data.validation;
    stats.append(el("span", { class: `stat-validation ${v.passed ? "pass" : "fail"}` },
      v.passed ? "validation passed" : `validation failed: ${v.errors.join("; ")}`));
  }
  if (data.trace_id) stats.append(traceLink(data.trace_id));
}
