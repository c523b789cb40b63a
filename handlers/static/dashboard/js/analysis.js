// Analysis view: start an analysis of one of your requests and watch its text stream in.
//
// Resuming after a reload: after every publication the view saves the text so far, the last
// delta's `seq` and the channel position (offset, epoch) in sessionStorage. A reloaded page
// shows the saved text at once and subscribes with `since` = that position, so the server
// sends exactly the publications after it: nothing repeated, nothing missing. Deltas are also
// checked by `seq`; if the stream ever lost its history (`resync`) the text is reloaded over
// REST, which is the stored truth once the analysis has finished.

import { h, replace, describeError } from "./dom.js";

const FINAL = new Set(["done", "failed", "cancelled"]);
const storageKey = (id) => `arena.analysis.${id}`;

function loadSaved(id) {
  try {
    return JSON.parse(sessionStorage.getItem(storageKey(id)) || "null");
  } catch {
    return null;
  }
}

function startForm(root, { session, notice, query }) {
  const select = h("select", { name: "request", required: true });
  const kind = h(
    "select",
    { name: "kind" },
    h("option", { value: "compare_proposals" }, "Compare proposals"),
    h("option", { value: "summarize_request" }, "Summarize request"),
  );
  const recent = h("div", { class: "recent" });
  const status = h("span", { class: "form-status" });

  async function showRecent() {
    if (!select.value) return;
    try {
      const page = await session.api(`/api/v1/requests/${select.value}/analyses?limit=10`);
      replace(
        recent,
        page.items.length ? h("h3", {}, "Earlier analyses") : null,
        h(
          "ul",
          {},
          page.items.map((a) =>
            h("li", {}, h("a", { href: `#/analysis/${a.id}` }, `${a.kind} · ${a.status} · ${new Date(a.created_at).toLocaleString()}`)),
          ),
        ),
      );
    } catch (error) {
      replace(recent, h("p", { class: "muted" }, describeError(error)));
    }
  }
  select.addEventListener("change", showRecent);

  const form = h(
    "form",
    {
      class: "card",
      onsubmit: async (event) => {
        event.preventDefault();
        try {
          const started = await session.api(`/api/v1/requests/${select.value}/analyses`, {
            method: "POST",
            body: { kind: kind.value },
          });
          location.hash = `#/analysis/${started.id}`;
        } catch (error) {
          status.textContent = describeError(error);
        }
      },
    },
    h("h2", {}, "AI analysis"),
    h("p", { class: "muted" }, "Pick one of your requests; the analysis streams in as it is written. Reload the page at any time: it resumes where it was."),
    h("div", { class: "row" }, h("label", {}, "Request ", select), h("label", {}, "Kind ", kind), h("button", { type: "submit" }, "Start analysis"), status),
    recent,
  );
  replace(root, form);

  session
    .api(`/api/v1/requests?owner=${session.user.id}&limit=100`)
    .then((page) => {
      if (!page.items.length) {
        replace(select, h("option", { value: "" }, "No requests yet: create one on the board"));
        return;
      }
      replace(select, page.items.map((r) => h("option", { value: r.id }, r.title)));
      if (query.get("request")) select.value = query.get("request");
      showRecent();
    })
    .catch((error) => notice(describeError(error), "error"));
  return () => {};
}

function watch(root, id, { session, client, notice }) {
  const saved = loadSaved(id);
  const state = { text: saved ? saved.text : "", seq: saved ? saved.seq : 0, status: saved ? saved.status : "…" };
  let stale = false;
  let sub = null;
  let closed = false;

  const statusBadge = h("span", { class: "badge", "data-testid": "analysis-status" });
  const meta = h("span", { class: "muted" });
  const output = h("pre", { class: "analysis-text", "data-testid": "analysis-text" });
  const cancel = h("button", { type: "button", class: "small", onclick: () => session.api(`/api/v1/analyses/${id}`, { method: "DELETE" }).catch((e) => notice(describeError(e), "error")) }, "Cancel");
  const resumed = h("span", { class: "muted", "data-testid": "analysis-resumed" }, saved ? `resumed at ${saved.text.length} characters` : "");

  function draw() {
    statusBadge.textContent = state.status;
    statusBadge.dataset.status = state.status;
    statusBadge.className = `badge status-${state.status}`;
    output.textContent = state.text;
    cancel.hidden = FINAL.has(state.status);
  }

  function save(pub) {
    sessionStorage.setItem(
      storageKey(id),
      JSON.stringify({ offset: pub.offset, epoch: pub.epoch, text: state.text, seq: state.seq, status: state.status }),
    );
  }

  async function fromRest() {
    const info = await session.api(`/api/v1/analyses/${id}`);
    state.text = info.text || "";
    state.seq = info.seq || 0;
    state.status = info.status;
    meta.textContent = `${info.kind} · ${info.provider} ${info.model}`;
    draw();
    return info;
  }

  function onPublication(event, pub) {
    if (event.type === "start") {
      state.status = "running";
      meta.textContent = `${event.kind} · ${event.provider} ${event.model}`;
    } else if (event.type === "delta") {
      if (event.seq === state.seq + 1) {
        state.text += event.text;
        state.seq = event.seq;
      } else if (event.seq > state.seq + 1) {
        stale = true; // a hole: the final REST text replaces ours below
      }
    } else if (event.type === "done" || event.type === "error") {
      state.status = event.type === "done" ? "done" : event.code === "cancelled" ? "cancelled" : "failed";
      if (event.type === "error") notice(`Analysis ended: ${event.message}`, "error");
      if (stale) fromRest().catch(() => {});
    }
    save(pub);
    draw();
  }

  replace(
    root,
    h(
      "article",
      { class: "card analysis" },
      h("header", {}, h("h2", {}, "Analysis"), statusBadge, meta, cancel, h("a", { class: "small-link", href: "#/analysis" }, "New analysis")),
      resumed,
      output,
    ),
  );
  draw();

  (async () => {
    let since = saved ? { offset: saved.offset, epoch: saved.epoch } : null;
    const info = await session.api(`/api/v1/analyses/${id}`);
    meta.textContent = `${info.kind} · ${info.provider} ${info.model}`;
    if (!saved) {
      if (FINAL.has(info.status)) {
        await fromRest();
        return; // finished: the stored text is complete, nothing to watch
      }
      since = info.since; // replay the stream from its first publication
    }
    if (closed) return;
    sub = client.subscribe(`analysis:${id}`, {
      since,
      publication: onPublication,
      resync: () => {
        stale = true;
        fromRest().catch((error) => notice(describeError(error), "error"));
      },
      error: (error) => notice(`Cannot watch this analysis: ${describeError(error)}`, "error"),
    });
  })().catch((error) => {
    replace(root, h("p", { class: "card error" }, `Cannot open analysis: ${describeError(error)}`));
  });

  return () => {
    closed = true;
    if (sub) sub.unsubscribe();
  };
}

export function analysisView(root, context) {
  const [id] = context.params;
  return id ? watch(root, id, context) : startForm(root, context);
}
