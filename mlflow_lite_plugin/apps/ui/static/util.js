// Helpers shared by the pages. Everything from the server is inserted as text, never as HTML:
// traces hold arbitrary model output.

/** An element with attributes/properties and children (strings become text nodes). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key in node && typeof value !== "string") node[key] = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** The message of a failed API response (FastAPI puts it in "detail"). */
async function failure(response) {
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
    else if (Array.isArray(body.detail)) {
      detail = body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("\n");
    }
  } catch (_) { /* not JSON: keep the status line */ }
  return new Error(detail);
}

/** GET (or POST with a JSON body) an /api endpoint; throws with the server's message. */
export async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const response = await fetch(`/api/${path}`, options);
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** POST to a Server-Sent Events endpoint and call onEvent(name, data) for each event. */
export async function sse(path, body, onEvent) {
  const response = await fetch(`/api/${path}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

export function usd(value) {
  if (value === null || value === undefined) return "unknown";
  if (value === 0) return "$0";
  if (value >= 0.01) return `$${value.toFixed(4)}`;
  return `$${value.toFixed(8).replace(/0+$/, "")}`;
}

export function seconds(value) {
  return value === null || value === undefined ? "–" : `${value.toFixed(2)} s`;
}

export function millis(value) {
  return value === null || value === undefined ? "–" : value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "–";
}

export function json(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

/** "a=1, b=2" -> {a: "1", b: "2"}. */
export function parseTags(text) {
  const tags = {};
  for (const part of text.split(",")) {
    const [key, ...rest] = part.split("=");
    if (key.trim()) tags[key.trim()] = rest.join("=").trim();
  }
  return tags;
}
