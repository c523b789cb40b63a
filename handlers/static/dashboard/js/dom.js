// Tiny DOM helpers. Text always goes in as text nodes (never innerHTML), so data from the API
// cannot inject markup, and no inline styles or scripts are needed (CSP: default-src 'self').

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "value" && "value" in element) {
      element.value = value;
    } else {
      element.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** An HTML element: h("button", {class: "x", onclick: fn}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same signature as h(). */
export function s(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace the children of `element`. */
export function replace(element, ...children) {
  element.replaceChildren();
  return build(element, {}, children);
}

/** "1234.5" -> "1,234.50" (money strings come from the API as decimals). */
export function money(value, currency = "") {
  if (value === null || value === undefined) return "—";
  const number = Number(value);
  const text = Number.isFinite(number)
    ? number.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })
    : String(value);
  return currency ? `${text} ${currency}` : text;
}

/** A short local time for an ISO timestamp. */
export function time(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleTimeString();
}

/** The first message of an API error with per-field details, for a form's error line. */
export function describeError(error) {
  if (!error) return "";
  const fields = error.errors ? Object.entries(error.errors) : [];
  if (!fields.length) return error.message || String(error);
  return `${error.message}: ${fields.map(([name, list]) => `${name}: ${[].concat(list).join(", ")}`).join("; ")}`;
}
