// Trace explorer: search the experiment's traces; a trace's spans, attributes and assessments;
// record a rating and/or correction as human feedback.
import { api, el, json, millis, usd, when } from "./util.js";

const $ = (id) => document.getElementById(id);

export function init() {
  $("trace-search").addEventListener("submit", (event) => {
    event.preventDefault();
    if (location.hash !== "#/traces") location.hash = "#/traces";
    else search();
  });
}

export function show([traceId]) {
  search(traceId);
  if (traceId) openTrace(traceId);
  else $("trace-detail").hidden = true;
}

async function search(selected) {
  const params = new URLSearchParams({ q: $("trace-q").value, model: $("trace-model").value });
  const body = $("trace-table").querySelector("tbody");
  let data;
  try {
    data = await api(`traces?${params}`);
  } catch (error) {
    body.replaceChildren(el("tr", {}, el("td", { colSpan: 10, class: "error" }, error.message)));
    return;
  }
  $("trace-count").textContent = `${data.traces.length} trace(s)`;
  body.replaceChildren(...data.traces.map((t) => el("tr", {
    "data-trace-id": t.trace_id,
    class: t.trace_id === selected ? "selected" : "",
    onclick: () => { location.hash = `#/traces/${encodeURIComponent(t.trace_id)}`; },
  },
  el("td", {}, when(t.time_ms)),
  el("td", {}, t.model || t.name || "–"),
  el("td", { class: "clip", title: t.question || "" }, t.question || ""),
  el("td", { class: "clip", title: t.answer || "" }, t.answer || ""),
  el("td", {}, t.tokens ?? "–"),
  el("td", {}, t.cost === null && t.state === "ERROR" ? "–" : usd(t.cost)),
  el("td", {}, millis(t.duration_ms)),
  el("td", {}, t.cached || ""),
  el("td", {}, t.rating === null ? "" : String(t.rating)),
  el("td", {}, t.state))));
}

async function openTrace(traceId) {
  const box = $("trace-detail");
  box.hidden = false;
  box.replaceChildren(el("p", { class: "muted" }, "loading…"));
  let trace;
  try {
    trace = await api(`traces/${encodeURIComponent(traceId)}`);
  } catch (error) {
    box.replaceChildren(el("p", { class: "error" }, error.message));
    return;
  }
  box.replaceChildren(
    el("h3", {}, `Trace ${trace.trace_id}`),
    el("p", { class: "muted" }, `${when(trace.time_ms)} · ${trace.state} · ${millis(trace.duration_ms)} · `
      + `${trace.tokens ?? "–"} tokens · ${usd(trace.cost)}`
      + (Object.keys(trace.tags).length ? ` · tags ${Object.entries(trace.tags).map(([k, v]) => `${k}=${v}`).join(", ")}` : "")),
    el("h3", {}, "Spans"),
    el("div", { id: "spans" }, trace.spans.map(spanView)),
    el("h3", {}, "Assessments"),
    el("div", { id: "assessments", class: "assessments" }, assessmentTable(trace.assessments)),
    el("h3", {}, "Your feedback"),
    feedbackForm(trace.trace_id),
  );
}

function spanView(span) {
  return el("details", { class: "span", style: `margin-left: ${span.depth * 20}px`, "data-span": span.name, open: span.depth === 0 },
    el("summary", {}, el("b", {}, span.name), ` ${span.type || ""} · ${millis(span.duration_ms)} · ${span.status}`,
      span.status_message ? el("span", { class: "error" }, ` ${span.status_message}`) : null),
    el("div", { class: "muted" }, "attributes"), el("pre", { class: "attributes" }, json(span.attributes)),
    el("div", { class: "muted" }, "inputs"), el("pre", {}, json(span.inputs)),
    el("div", { class: "muted" }, "outputs"), el("pre", {}, json(span.outputs)),
    span.events.length ? [el("div", { class: "muted" }, "events"), el("pre", {}, json(span.events))] : null);
}

function assessmentTable(assessments) {
  if (!assessments.length) return el("p", { class: "muted" }, "None yet.");
  return el("table", {},
    el("thead", {}, el("tr", {}, ["Name", "Kind", "Value", "Source", "Rationale / error", "Time"].map((h) => el("th", {}, h)))),
    el("tbody", {}, assessments.map((a) => el("tr", { "data-assessment": a.name, class: a.valid === false ? "muted" : "" },
      el("td", {}, a.name), el("td", {}, a.kind), el("td", {}, json(a.value)),
      el("td", {}, `${a.source_type || ""} ${a.source_id || ""}`),
      el("td", {}, a.error || a.rationale || ""), el("td", {}, when(a.time_ms))))));
}

function feedbackForm(traceId) {
  const rating = el("select", { id: "fb-rating" }, el("option", { value: "" }, "–"),
    ["5", "4", "3", "2", "1"].map((r) => el("option", { value: r }, r)));
  const correction = el("textarea", { id: "fb-correction", rows: 2, placeholder: "The answer it should have given" });
  const comment = el("input", { id: "fb-comment", placeholder: "Why" });
  const user = el("input", { id: "fb-user", value: localStorage.getItem("mlflow-lite-user") || "", placeholder: "Your name" });
  const message = el("span", { id: "fb-message", class: "muted" });
  const submit = el("button", { id: "fb-submit", type: "submit" }, "Record feedback");
  const form = el("form", { class: "feedback" },
    el("label", {}, "Rating (1-5)"), rating,
    el("label", {}, "Correction"), correction,
    el("label", {}, "Comment"), comment,
    el("label", {}, "User"), user,
    el("span"), el("div", {}, submit, " ", message));
  const orNull = (text) => (text.trim() ? text.trim() : null);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    localStorage.setItem("mlflow-lite-user", user.value.trim());
    try {
      const result = await api(`traces/${encodeURIComponent(traceId)}/feedback`, {
        rating: rating.value ? parseInt(rating.value, 10) : null,
        correction: orNull(correction.value),
        comment: orNull(comment.value),
        user: orNull(user.value),
      });
      $("assessments").replaceChildren(assessmentTable(result.assessments));
      message.className = "muted";
      message.textContent = "Recorded.";
    } catch (error) {
      message.className = "error";
      message.textContent = error.message;
    }
  });
  return form;
}
