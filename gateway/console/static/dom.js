// Building the page. Everything shown is made with createElement and text nodes, never by
// parsing markup: record keys and values, topic and tenant names are user data, and a
// value such as "<img onerror=...>" must be shown as those characters, not run.

const SVG = "http://www.w3.org/2000/svg";

function apply(node, props) {
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: h("td", {class: "num"}, "12"). Attributes are set as attributes,
 * "on..." as listeners; children are nodes or text. */
export function h(tag, props, ...children) {
  const node = document.createElement(tag);
  apply(node, props);
  return append(node, children);
}

/** An SVG element, likewise. */
export function s(tag, props, ...children) {
  const node = document.createElementNS(SVG, tag);
  apply(node, props);
  return append(node, children);
}

/** Replace what a node holds. */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

export function table(caption, headings, rows) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      null,
      caption ? h("caption", null, caption) : null,
      h("thead", null, h("tr", null, headings.map((text) => h("th", { scope: "col" }, text)))),
      h("tbody", null, rows),
    ),
  );
}

export function field(label, input) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 10)}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input);
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function bytes(n) {
  let value = Number(n) || 0;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${UNITS[unit]}`;
}

export function rate(n, unit) {
  const value = Number(n) || 0;
  return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} ${unit}/s`;
}

export function time(ms) {
  return ms === null || ms === undefined ? "never" : new Date(ms).toLocaleString();
}

let unsay = null;

/** The status line at the bottom of the page (read out by screen readers), for a while. */
export function say(text) {
  const status = document.getElementById("status");
  status.textContent = text;
  clearTimeout(unsay);
  unsay = setTimeout(() => status.replaceChildren(), 10000);
}
