// The page shell: loads the settings, then shows one page per hash route:
// #/playground, #/traces, #/traces/<trace id>, #/dashboard.
import { api, el } from "./util.js";
import * as playground from "./playground.js";
import * as traces from "./traces.js";
import * as dashboard from "./dashboard.js";

const pages = { playground, traces, dashboard };

function route() {
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const page = pages[name] ? name : "playground";
  for (const key of Object.keys(pages)) {
    document.getElementById(`page-${key}`).hidden = key !== page;
  }
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.page === page);
  }
  pages[page].show(rest.map(decodeURIComponent));
}

async function start() {
  const config = await api("config");
  document.getElementById("experiment").textContent = config.experiment;
  document.getElementById("model-list").replaceChildren(...config.models.map((m) => el("option", { value: m })));
  document.getElementById("template-list").replaceChildren(...config.templates.map((t) => el("option", { value: t })));
  for (const page of Object.values(pages)) page.init(config);
  window.addEventListener("hashchange", route);
  route();
  document.body.dataset.ready = "true"; // for tests and scripts: the page is wired up
}

start();
