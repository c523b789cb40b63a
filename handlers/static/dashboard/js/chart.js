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
