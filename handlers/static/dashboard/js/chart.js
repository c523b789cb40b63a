// A small bar chart in plain SVG (no library): alert counts per time bucket, buy and sell
// volume stacked as a second series. Sized by viewBox, so CSS decides its width.

import { s } from "./dom.js";

const WIDTH = 720;
const HEIGHT = 180;
const PAD = { left: 36, right: 8, top: 10, bottom: 22 };

/** An <svg> for `series` = [{t, count, buy_volume, sell_volume}, ...]. */
export function barChart(series, { label = "alerts per bucket" } = {}) {
  const max = Math.max(1, ...series.map((b) => b.count));
  const innerW = WIDTH - PAD.left - PAD.right;
  const innerH = HEIGHT - PAD.top - PAD.bottom;
  const step = series.length ? innerW / series.length : innerW;
  const barW = Math.max(1, step * 0.8);
  const y = (value) => PAD.top + innerH - (value / max) * innerH;
  const ticks = [0, Math.ceil(max / 2), max].filter((v, i, all) => all.indexOf(v) === i);
  const every = Math.max(1, Math.ceil(series.length / 6));
  const total = series.reduce((sum, b) => sum + b.count, 0);
  return s(
    "svg",
    { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img", "aria-label": `${label}: ${total} in total`, "data-total": total },
    ticks.map((v) => [
      s("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v), class: "grid" }),
      s("text", { x: PAD.left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, String(v)),
    ]),
    series.map((b, i) => {
      const x = PAD.left + i * step + (step - barW) / 2;
      const bar = s(
        "rect",
        { x, y: y(b.count), width: barW, height: Math.max(0, PAD.top + innerH - y(b.count)), class: "bar", "data-count": b.count },
        s("title", {}, `${new Date(b.t).toLocaleTimeString()}: ${b.count} alerts, buy ${b.buy_volume}, sell ${b.sell_volume}`),
      );
      const tick =
        i % every === 0
          ? s("text", { x: x + barW / 2, y: HEIGHT - 6, class: "axis", "text-anchor": "middle" }, new Date(b.t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }))
          : null;
      return [bar, tick];
    }),
  );
}

const SIDES = new Set(["buy", "sell"]);
// Room for price labels on the left and for the markers above and below the line.
const PRICE_PAD = { left: 72, right: 14, top: 18, bottom: 34 };

/** An <svg> price line for `points` = [{id, time, price, action}, ...] (oldest first), with a
 * marker on every buy (up triangle) and sell (down triangle). */
export function priceChart(points, { label = "price" } = {}) {
  const PAD = PRICE_PAD;
  const innerW = WIDTH - PAD.left - PAD.right;
  const innerH = HEIGHT - PAD.top - PAD.bottom;
  const prices = points.map((p) => p.price);
  let lo = Math.min(...prices);
  let hi = Math.max(...prices);
  if (!points.length) [lo, hi] = [0, 1];
  if (lo === hi) [lo, hi] = [lo - 1, hi + 1];
  const times = points.map((p) => Date.parse(p.time));
  const t0 = Math.min(...times);
  const t1 = Math.max(...times);
  const x = (t) => PAD.left + (t1 > t0 ? ((t - t0) / (t1 - t0)) * innerW : innerW / 2);
  const y = (price) => PAD.top + innerH - ((price - lo) / (hi - lo)) * innerH;
  const line = points.map((p, i) => `${i ? "L" : "M"}${x(times[i]).toFixed(1)},${y(p.price).toFixed(1)}`).join(" ");
  const markers = points.filter((p) => SIDES.has(p.action)).length;
  const digits = hi - lo < 10 ? 2 : 0;
  return s(
    "svg",
    {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      class: "chart price",
      role: "img",
      "aria-label": `${label}: ${points.length} prices, ${markers} buy/sell markers`,
      "data-points": points.length,
      "data-markers": markers,
    },
    [lo, hi].map((v) => [
      s("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v), class: "grid" }),
      s("text", { x: PAD.left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, v.toFixed(digits)),
    ]),
    points.length ? s("path", { d: line, class: "price-line" }) : null,
    points.length
      ? [[t0, "start"], [t1, "end"]].map(([t, anchor]) =>
          s("text", { x: anchor === "start" ? PAD.left : WIDTH - PAD.right, y: HEIGHT - 4, class: "axis", "text-anchor": anchor }, new Date(t).toLocaleTimeString()),
        )
      : null,
    points.map((p, i) => {
      const cx = x(times[i]);
      const cy = y(p.price);
      const tip = s("title", {}, `${new Date(p.time).toLocaleTimeString()}: ${p.action ?? "price"} ${p.price}`);
      if (!SIDES.has(p.action)) return s("circle", { cx, cy, r: 2.5, class: "point", "data-alert-id": p.id }, tip);
      // A triangle under the price for a buy (pointing up), above it for a sell (pointing down).
      const d = p.action === "buy" ? `M${cx},${cy + 4} l-6,10 h12 z` : `M${cx},${cy - 4} l-6,-10 h12 z`;
      return s("path", { d, class: `marker marker-${p.action}`, "data-alert-id": p.id }, tip);
    }),
  );
}
