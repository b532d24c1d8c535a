// Cost dashboard: totals, spend by day, model and tag (Chart.js, the vendored UMD build that
// defines window.Chart), the budget, what the cache saved, and every installed control.
import { api, el, json, usd } from "./util.js";

const $ = (id) => document.getElementById(id);

export function init() {
  $("dash-days").addEventListener("change", load);
}

export function show() {
  load();
}

async function load() {
  let data;
  try {
    data = await api(`dashboard?days=${$("dash-days").value}`);
  } catch (error) {
    $("cards").replaceChildren(el("p", { class: "error" }, error.message));
    return;
  }
  const t = data.totals;
  const cache = data.cache;
  $("cards").replaceChildren(
    card("spend-total", "Spend", usd(t.cost), t.unpriced_calls ? `${t.unpriced_calls} call(s) without a known price` : ""),
    card("calls-total", "Calls", t.calls, t.errors ? `${t.errors} failed before answering` : ""),
    card("tokens-total", "Tokens", t.tokens.toLocaleString()),
    card("cache-hits", "Cache hits", t.cache_hits, `saved ${usd(t.cost_saved)}`),
    card("cache-process", "Cache (this server)", cache.enabled.length ? `${Math.round(cache.hit_rate * 100)}% hits` : "off",
      cache.enabled.length ? `${cache.hits} hits, ${cache.misses} misses, saved ${usd(cache.cost_saved)}` : "start without --no-cache"),
  );
  $("dash-note").textContent = `since ${data.first_day} (UTC)` + (data.truncated ? " · only the newest traces are counted" : "");
  chart("chart-days", "bar", data.by_day.map((d) => d.day.slice(5)), data.by_day.map((d) => d.cost));
  chart("chart-models", "bar", data.by_model.map((m) => m.name), data.by_model.map((m) => m.cost), "y");
  chart("chart-tags", "bar", data.by_tag.map((g) => g.name), data.by_tag.map((g) => g.cost), "y");
  budget(data.budget);
  controls(data.controls);
}

function card(id, label, value, note = "") {
  return el("div", { class: "card", id }, el("div", { class: "muted" }, label), el("div", { class: "value" }, value),
    note ? el("div", { class: "muted" }, note) : null);
}

function chart(id, type, labels, values, indexAxis = "x") {
  const canvas = $(id);
  Chart.getChart(canvas)?.destroy();
  new Chart(canvas, {
    type,
    data: { labels, datasets: [{ label: "USD", data: values, backgroundColor: "#0b6bcb" }] },
    options: {
      indexAxis,
      animation: false,
      scales: { [indexAxis === "x" ? "y" : "x"]: { beginAtZero: true, ticks: { callback: (value) => usd(value) } } },
      maintainAspectRatio: false,
      plugins: {
        legend: { display: false },
        tooltip: { callbacks: { label: (item) => usd(item.raw) } },
      },
    },
  });
}

function budget(status) {
  const box = $("budget");
  if (!status) {
    box.replaceChildren(el("p", { class: "muted" }, "No budget is set (mlflow-lite ui --daily-budget USD)."));
    return;
  }
  const used = status.spent + status.reserved;
  box.replaceChildren(
    el("p", {}, `${usd(status.spent)} spent of ${usd(status.limit)} this ${status.period === "daily" ? "day" : "month"}`,
      status.reserved ? ` (${usd(status.reserved)} reserved by calls in flight)` : ""),
    el("progress", { max: status.limit, value: Math.min(used, status.limit) }),
    el("p", { class: "muted" }, `${usd(status.remaining)} remaining · resets ${new Date(status.resets_at).toLocaleString()}`
      + ` · scope ${status.scope}`),
  );
}

// Every stage that describes itself, built-in or added with add_stage, in pipeline order: its
// settings (the run tag's summary) and live status. Text only: a third party's stage may say anything.
function controls(rows) {
  const box = $("controls");
  if (!rows.length) {
    box.replaceChildren(el("p", { class: "muted" }, "No control is installed."));
    return;
  }
  box.replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "Control"), el("th", {}, "Order"), el("th", {}, "Settings"),
      el("th", {}, "Status"))),
    el("tbody", {}, rows.map((c) => el("tr", { "data-control": c.name },
      el("td", {}, c.name, c.group !== c.name ? el("div", { class: "muted" }, c.group) : null),
      el("td", {}, c.order),
      el("td", {}, c.summary || "–"),
      el("td", {}, status(c.status)),
    ))),
  ));
}

function status(value) {
  if (value === null || value === undefined) return "–";
  return Object.entries(value).map(([key, item]) => `${key}: ${typeof item === "object" ? json(item) : item}`)
    .join(", ");
}
