// Alerts view: create alert feeds (strategies), copy a feed's webhook URL, and watch alerts
// arrive live in a table, on a chart of the stats series, and on a price line of one ticker
// with buy/sell markers (GET /api/v1/alerts/series, then extended by live alert.created).
//
// The webhook URL holds a secret and the API shows it once (on create or rotate); the view
// keeps it in memory for this page only, never in storage.

import { h, replace, money, time, describeError } from "./dom.js";
import { barChart, priceChart } from "./chart.js";

const revealed = new Map(); // strategy id -> secrets, for this page's lifetime only
const STATS_WINDOW_MS = 60 * 60 * 1000;
const SERIES_WINDOW_MS = 24 * 60 * 60 * 1000;
const SERIES_PAGES = 5; // at most 5 x 2000 points on the line

function copyButton(text) {
  const button = h("button", { type: "button", class: "small" }, "Copy");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select and copy";
    }
    setTimeout(() => {
      button.textContent = "Copy";
    }, 2000);
  });
  return button;
}

function secretsBox(secrets) {
  return h(
    "div",
    { class: "secrets", "data-testid": "webhook" },
    h("p", {}, "TradingView webhook URL (shown once; keep it secret):"),
    h("div", { class: "row" }, h("input", { type: "text", readonly: true, value: secrets.webhook_url, class: "mono", "data-testid": "webhook-url" }), copyButton(secrets.webhook_url)),
    h("p", { class: "muted" }, "Signed webhooks (Standard Webhooks): POST to ", h("code", {}, secrets.signed_webhook_url), " with signing secret ", h("code", {}, secrets.signing_secret)),
    h("p", { class: "muted" }, "Try it: ", h("code", {}, `curl -X POST -H 'Content-Type: application/json' -d '{"ticker":"BTCUSD","action":"buy","quantity":1,"price":65000}' ${secrets.webhook_url}`)),
  );
}

function feedList(root, { session, notice }) {
  const list = h("ul", { class: "feeds" });
  const name = h("input", { type: "text", name: "name", required: true, maxlength: "200", placeholder: "Feed name, e.g. BTC breakout" });
  const status = h("span", { class: "form-status" });
  const form = h(
    "form",
    {
      class: "card",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const created = await session.api("/api/v1/strategies", { method: "POST", body: { name: name.value } });
          revealed.set(created.id, created.secrets);
          location.hash = `#/alerts/${created.id}`;
        } catch (error) {
          status.textContent = describeError(error);
        }
      },
    },
    h("h2", {}, "Alert feeds"),
    h("p", { class: "muted" }, "A feed receives TradingView (or any) webhooks; its alerts stream here live."),
    h("div", { class: "row" }, name, h("button", { type: "submit" }, "Create feed"), status),
    list,
  );
  replace(root, form);
  session
    .api("/api/v1/strategies")
    .then((page) =>
      replace(
        list,
        page.items.length
          ? page.items.map((f) => h("li", {}, h("a", { href: `#/alerts/${f.id}` }, f.name), h("span", { class: "muted" }, ` · ${f.access}`)))
          : h("li", { class: "muted" }, "No feeds yet."),
      ),
    )
    .catch((error) => notice(describeError(error), "error"));
  return () => {};
}

function feed(root, id, { session, client, notice }) {
  const alerts = new Map();
  const rows = h("tbody", {});
  const chartBox = h("div", { class: "chart-box", "data-testid": "alerts-chart" });
  const title = h("h2", {}, "Feed");
  const secretsSlot = h("div", {});
  let statsTimer = null;
  let closed = false;

  // The price line: one ticker (the newest priced alert's, or the one picked), its points
  // oldest first. Live points that arrive during a (re)load are kept and merged on top of it.
  const priceBox = h("div", { class: "chart-box", "data-testid": "price-chart" });
  const tickerSelect = h("select", {
    "data-testid": "price-ticker",
    "aria-label": "Ticker",
    onchange: () => {
      selected = tickerSelect.value || null;
      loadSeries().catch(() => {});
    },
  });
  let selected = null;
  let points = [];
  let seriesLoads = 0;
  let seriesPending = null;
  let seriesTimer = null;

  function drawPrice() {
    replace(priceBox, priceChart(points, { label: `${selected ?? "no ticker"} price` }));
  }

  function drawTickers() {
    const known = new Set([...alerts.values()].filter((a) => a.ticker && a.price !== null).map((a) => a.ticker));
    if (selected) known.add(selected);
    const options = [...known].sort();
    replace(tickerSelect, options.length ? options.map((t) => h("option", { value: t }, t)) : h("option", { value: "" }, "no priced alerts yet"));
    tickerSelect.value = selected ?? "";
  }

  function addPoint(point) {
    if (points.some((p) => p.id === point.id)) return;
    points.push(point);
    points.sort((a, b) => a.time.localeCompare(b.time) || a.id.localeCompare(b.id));
  }

  async function loadSeries() {
    const generation = ++seriesLoads;
    const ticker = selected;
    seriesPending ??= [];
    const live = seriesPending;
    let loaded = [];
    if (ticker) {
      const since = new Date(Date.now() - SERIES_WINDOW_MS).toISOString();
      let cursor = null;
      for (let page = 0; page < SERIES_PAGES; page++) {
        const query = new URLSearchParams({ strategy_id: id, ticker, since, limit: "2000" });
        if (cursor) query.set("cursor", cursor);
        const res = await session.api(`/api/v1/alerts/series?${query}`);
        loaded = loaded.concat(res.points);
        cursor = res.next_cursor;
        if (!cursor) break;
      }
    }
    if (closed || generation !== seriesLoads) return;
    seriesPending = null;
    points = loaded;
    for (const point of live) if (point.ticker === ticker) addPoint(point);
    drawTickers();
    drawPrice();
  }

  function refreshSeriesSoon() {
    clearTimeout(seriesTimer);
    seriesTimer = setTimeout(() => loadSeries().catch(() => {}), 250);
  }

  function livePrice(alert) {
    if (!alert.ticker || alert.price === null || alert.price === undefined) return;
    const point = { id: alert.id, time: alert.received_at, price: alert.price, action: alert.action, ticker: alert.ticker };
    seriesPending?.push(point);
    if (!selected) {
      selected = alert.ticker;
      loadSeries().catch(() => {});
      return;
    }
    if (alert.ticker === selected) {
      addPoint(point);
      drawPrice();
    }
    drawTickers();
  }

  function drawRows() {
    const items = [...alerts.values()].sort((a, b) => b.received_at.localeCompare(a.received_at));
    replace(
      rows,
      items.length
        ? items.map((a) =>
            h(
              "tr",
              { "data-alert-id": a.id, class: a.fresh ? "flash" : "" },
              h("td", {}, time(a.received_at)),
              h("td", { class: "ticker" }, a.ticker || "—"),
              h("td", {}, a.action ? h("span", { class: `badge action-${a.action}` }, a.action) : "—"),
              h("td", { class: "num" }, a.quantity ?? "—"),
              h("td", { class: "num" }, a.price === null ? "—" : money(a.price)),
              h("td", { class: "message" }, a.message || ""),
            ),
          )
        : h("tr", {}, h("td", { colspan: "6", class: "muted" }, "No alerts yet: post one to the webhook URL.")),
    );
    for (const a of items) a.fresh = false;
  }

  async function loadStats() {
    const since = new Date(Date.now() - STATS_WINDOW_MS).toISOString();
    const stats = await session.api(`/api/v1/alerts/stats?strategy=${id}&bucket=1m&since=${encodeURIComponent(since)}`);
    if (!closed) replace(chartBox, barChart(stats.series, { label: "alerts per minute, last hour" }));
  }

  function refreshStatsSoon() {
    clearTimeout(statsTimer);
    statsTimer = setTimeout(() => loadStats().catch(() => {}), 250);
  }

  // Live changes that arrive while a load is in flight may be missing from its (older)
  // snapshot: remember them and apply them again on top of it. Only the newest load applies.
  let loads = 0;
  let pending = null;

  async function load() {
    const generation = ++loads;
    pending ??= { added: new Map(), deleted: new Set() };
    const changes = pending;
    let page;
    try {
      page = await session.api(`/api/v1/alerts?strategy=${id}&limit=50`);
    } catch (error) {
      if (generation === loads) pending = null;
      throw error;
    }
    if (closed || generation !== loads) return;
    pending = null;
    alerts.clear();
    page.items.forEach((a) => {
      if (!changes.deleted.has(a.id)) alerts.set(a.id, a);
    });
    for (const [key, a] of changes.added) alerts.set(key, a);
    drawRows();
    if (!selected) selected = page.items.find((a) => a.ticker && a.price !== null)?.ticker ?? null;
    await Promise.all([loadStats(), loadSeries()]);
  }

  async function rotate() {
    try {
      const secrets = await session.api(`/api/v1/strategies/${id}/rotate`, { method: "POST", body: {} });
      revealed.set(id, secrets.secrets ?? secrets);
      replace(secretsSlot, secretsBox(revealed.get(id)));
    } catch (error) {
      notice(describeError(error), "error");
    }
  }

  replace(
    root,
    h(
      "article",
      { class: "card" },
      h("header", {}, title, h("a", { class: "small-link", href: "#/alerts" }, "All feeds")),
      secretsSlot,
      chartBox,
      h("div", { class: "price-head" }, h("h3", {}, "Price"), tickerSelect),
      priceBox,
      h(
        "table",
        { class: "alerts", "data-testid": "alerts-table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Received"), h("th", {}, "Ticker"), h("th", {}, "Action"), h("th", {}, "Qty"), h("th", {}, "Price"), h("th", {}, "Message"))),
        rows,
      ),
    ),
  );

  if (revealed.has(id)) replace(secretsSlot, secretsBox(revealed.get(id)));
  session
    .api(`/api/v1/strategies/${id}`)
    .then((strategy) => {
      title.textContent = strategy.name;
      if (!revealed.has(id) && strategy.access !== "shared") {
        replace(
          secretsSlot,
          h("p", { class: "muted" }, "The webhook URL was shown when the feed was created. Lost it? ", h("button", { type: "button", class: "small", onclick: rotate }, "Rotate secrets"), " (the old URL keeps working for the grace period)."),
        );
      }
    })
    .catch((error) => notice(describeError(error), "error"));

  const sub = client.subscribe(`alerts:${id}`, {
    publication: (event) => {
      if (event.type === "alert.created" && event.alert) {
        const alert = { ...event.alert, fresh: true };
        alerts.set(alert.id, alert);
        pending?.added.set(alert.id, alert);
        livePrice(alert);
      } else if (event.type === "alert.updated" && event.alert) {
        const alert = { ...event.alert, fresh: true };
        alerts.set(alert.id, alert);
        pending?.added.set(alert.id, alert);
        refreshSeriesSoon();
      } else if (event.type === "alert.deleted") {
        alerts.delete(event.alert_id);
        pending?.added.delete(event.alert_id);
        pending?.deleted.add(event.alert_id);
        refreshSeriesSoon();
      } else {
        return;
      }
      drawRows();
      refreshStatsSoon();
    },
    resync: () => load().catch(() => {}),
    error: (error) => notice(`Cannot watch this feed: ${describeError(error)}`, "error"),
  });
  load().catch((error) => notice(describeError(error), "error"));

  return () => {
    closed = true;
    clearTimeout(statsTimer);
    clearTimeout(seriesTimer);
    sub.unsubscribe();
  };
}

export function alertsView(root, context) {
  const [id] = context.params;
  return id ? feed(root, id, context) : feedList(root, context);
}
