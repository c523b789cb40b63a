// Requests & proposals board. Buyers see their requests with every proposal, move proposals
// through the state machine and invite vendors by e-mail; vendors see open requests (and those
// they were invited to, which appear live when an invitation is accepted), submit proposals and
// withdraw them. Changes made anywhere (another tab, another user, the API) arrive on the
// user's own channel `user:{id}` and are applied by version, so a REST reload and a live event
// can arrive in either order without undoing each other.

import { h, replace, money, time, describeError } from "./dom.js";

const OWNER_MOVES = {
  submitted: ["shortlisted", "rejected", "accepted"],
  shortlisted: ["rejected", "accepted"],
};
const VERBS = { shortlisted: "Shortlist", rejected: "Reject", accepted: "Accept", withdrawn: "Withdraw" };

/** Keep the newer of two versions of a resource; true when `item` was newer. */
function upsert(map, item) {
  const current = map.get(item.id);
  if (current && current.version >= item.version) return false;
  map.set(item.id, item);
  return true;
}

function badge(status) {
  return h("span", { class: `badge status-${status}`, "data-status": status }, status);
}

export function boardView(root, { session, client, user, notice }) {
  const vendor = user.role === "vendor";
  const requests = new Map();
  const proposals = new Map();
  const flashed = new Set();
  const invited = new Map(); // request id -> outcome of the last invitation sent from this page
  const list = h("div", { class: "board-list", "data-testid": "board-list" });
  let closed = false;

  const proposalsOf = (requestId) =>
    [...proposals.values()]
      .filter((p) => p.request_id === requestId)
      .sort((a, b) => a.created_at.localeCompare(b.created_at));

  async function changeStatus(proposal, status) {
    try {
      const updated = await session.api(`/api/v1/proposals/${proposal.id}/status`, {
        method: "PUT",
        body: { status, version: proposal.version },
      });
      if (upsert(proposals, updated)) draw();
    } catch (error) {
      notice(error.status === 412 ? "That proposal changed meanwhile; the board shows the latest state." : describeError(error), "error");
    }
  }

  function proposalRow(proposal, request) {
    const moves = vendor
      ? (["submitted", "shortlisted"].includes(proposal.status) ? ["withdrawn"] : [])
      : (OWNER_MOVES[proposal.status] || []).filter((s) => s !== "accepted" || request?.status === "open");
    const row = h(
      "tr",
      { "data-proposal-id": proposal.id, class: flashed.has(proposal.id) ? "flash" : "" },
      h("td", {}, vendor ? (request ? request.title : proposal.request_id.slice(0, 8)) : proposal.summary),
      h("td", { class: "num" }, money(proposal.price, proposal.currency)),
      h("td", { class: "status" }, badge(proposal.status)),
      h("td", {}, time(proposal.updated_at)),
      h(
        "td",
        { class: "actions" },
        moves.map((status) =>
          h("button", { type: "button", class: `small move-${status}`, onclick: () => changeStatus(proposal, status) }, VERBS[status]),
        ),
      ),
    );
    return row;
  }

  function proposalTable(items, request) {
    if (!items.length) return h("p", { class: "muted" }, vendor ? "No proposals yet." : "No proposals yet — vendors see this request while it is open.");
    return h(
      "table",
      { class: "proposals" },
      h("thead", {}, h("tr", {}, h("th", {}, vendor ? "Request" : "Proposal"), h("th", {}, "Price"), h("th", {}, "Status"), h("th", {}, "Updated"), h("th", {}, ""))),
      h("tbody", {}, items.map((p) => proposalRow(p, request ?? requests.get(p.request_id)))),
    );
  }

  function proposalForm(request) {
    const price = h("input", { type: "number", name: "price", min: "0", step: "0.01", required: true, placeholder: "Price" });
    const summary = h("input", { type: "text", name: "summary", required: true, maxlength: "2000", placeholder: "Your offer in one line" });
    const status = h("span", { class: "form-status" });
    return h(
      "form",
      {
        class: "inline proposal-form",
        onsubmit: async (event) => {
          event.preventDefault();
          try {
            const created = await session.api(`/api/v1/requests/${request.id}/proposals`, {
              method: "POST",
              body: { price: price.value, currency: request.currency, summary: summary.value },
            });
            upsert(proposals, created);
            draw();
          } catch (error) {
            status.textContent = describeError(error);
          }
        },
      },
      price,
      summary,
      h("button", { type: "submit" }, "Submit proposal"),
      status,
    );
  }

  function inviteForm(request) {
    const email = h("input", { type: "email", name: "email", required: true, placeholder: "Vendor's e-mail" });
    // The card is redrawn by every live event: the outcome is kept per request, not in the DOM.
    const status = h("span", { class: "form-status", "data-testid": "invite-status" }, invited.get(request.id) || "");
    return h(
      "form",
      {
        class: "inline invite-form",
        onsubmit: async (event) => {
          event.preventDefault();
          try {
            const invite = await session.api(`/api/v1/requests/${request.id}/invites`, {
              method: "POST",
              body: { email: email.value.trim() },
            });
            invited.set(request.id, `Invitation sent to ${invite.email}`);
          } catch (error) {
            invited.set(request.id, describeError(error));
          }
          draw();
        },
      },
      email,
      h("button", { type: "submit", class: "small" }, "Invite vendor"),
      status,
    );
  }

  function requestCard(request) {
    const own = proposalsOf(request.id);
    const mine = vendor ? own.filter((p) => p.vendor_id === user.id) : own;
    return h(
      "article",
      { class: "card request", "data-request-id": request.id },
      h(
        "header",
        {},
        h("h3", {}, request.title),
        badge(request.status),
        h("span", { class: "muted" }, request.budget ? `budget ${money(request.budget, request.currency)}` : "no budget"),
        vendor ? null : h("a", { class: "small-link", href: `#/analysis?request=${request.id}` }, "Analyse proposals →"),
      ),
      request.description ? h("p", { class: "description" }, request.description) : null,
      request.requirements.length
        ? h("ul", { class: "requirements" }, request.requirements.map((r) => h("li", {}, h("b", {}, r.name), ` (${r.priority})`)))
        : null,
      proposalTable(mine, request),
      vendor && !mine.length && request.status === "open" ? proposalForm(request) : null,
      !vendor && request.status === "open" ? inviteForm(request) : null,
    );
  }

  function draw() {
    if (closed) return;
    let cards;
    if (vendor) {
      const open = [...requests.values()].filter((r) => r.status === "open");
      const elsewhere = [...proposals.values()].filter((p) => !open.some((r) => r.id === p.request_id));
      cards = [
        h("h2", {}, "Open requests"),
        open.length ? open.map(requestCard) : h("p", { class: "muted" }, "No open requests right now."),
        h("h2", {}, "My other proposals"),
        proposalTable(elsewhere),
      ];
    } else {
      const mine = [...requests.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
      cards = mine.length ? mine.map(requestCard) : h("p", { class: "muted" }, "No requests yet: create one above.");
    }
    replace(list, cards);
    flashed.clear();
  }

  async function load() {
    try {
      if (vendor) {
        const [open, mine] = await Promise.all([
          session.api("/api/v1/requests?status=open&limit=50"),
          session.api("/api/v1/proposals?mine=true&limit=100"),
        ]);
        open.items.forEach((r) => upsert(requests, r));
        mine.items.forEach((p) => upsert(proposals, p));
      } else {
        const page = await session.api(`/api/v1/requests?owner=${user.id}&limit=50`);
        page.items.forEach((r) => upsert(requests, r));
        const pages = await Promise.all(
          page.items.map((r) => session.api(`/api/v1/proposals?request_id=${r.id}&limit=100`)),
        );
        pages.forEach((p) => p.items.forEach((item) => upsert(proposals, item)));
      }
      draw();
    } catch (error) {
      notice(`Could not load the board: ${describeError(error)}`, "error");
    }
  }

  function apply(event) {
    if (!event || typeof event.type !== "string") return;
    if (event.type === "request.deleted") {
      requests.delete(event.request_id);
      for (const p of proposalsOf(event.request_id)) proposals.delete(p.id);
    } else if (event.request && upsert(requests, event.request)) {
      flashed.add(event.request.id);
      if (event.type === "request.invited") notice(`You were invited to “${event.request.title}”`);
    } else if (event.proposal && event.proposal.version !== undefined && upsert(proposals, event.proposal)) {
      flashed.add(event.proposal.id);
    }
    draw();
  }

  const channel = `user:${user.id}`;
  const sub = client.subscribe(channel, {
    publication: apply,
    resync: () => load(), // history lost: the REST state is the truth
  });

  const createForm = vendor ? h("p", { class: "muted" }, "Signed in as a vendor: submit proposals to open requests below. Status changes by buyers appear here live.") : newRequestForm();

  function newRequestForm() {
    const title = h("input", { type: "text", name: "title", required: true, maxlength: "200", placeholder: "e.g. CRM for the sales team" });
    const budget = h("input", { type: "number", name: "budget", min: "0", step: "0.01", placeholder: "Budget (USD)" });
    const description = h("textarea", { name: "description", rows: "2", placeholder: "What do you need?" });
    const requirements = h("textarea", { name: "requirements", rows: "3", placeholder: "Requirements, one per line: SSO, Audit log, …" });
    const status = h("span", { class: "form-status" });
    return h(
      "form",
      {
        class: "card new-request",
        onsubmit: async (event) => {
          event.preventDefault();
          const names = [...new Set(requirements.value.split("\n").map((line) => line.trim()).filter(Boolean))];
          try {
            const created = await session.api("/api/v1/requests", {
              method: "POST",
              body: {
                title: title.value,
                description: description.value,
                requirements: names.map((name, index) => ({ name, priority: index === 0 ? "must" : "should" })),
                ...(budget.value ? { budget: budget.value } : {}),
              },
            });
            upsert(requests, created);
            event.target.reset();
            status.textContent = "";
            draw();
          } catch (error) {
            status.textContent = describeError(error);
          }
        },
      },
      h("h2", {}, "New request"),
      h("div", { class: "row" }, title, budget),
      description,
      requirements,
      h("div", { class: "row" }, h("button", { type: "submit" }, "Create request"), status),
    );
  }

  replace(root, createForm, list);
  load();
  return () => {
    closed = true;
    sub.unsubscribe();
  };
}
