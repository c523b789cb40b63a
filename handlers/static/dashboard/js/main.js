// Dashboard entry point: sign-in, the connection indicator and the view router (#/board,
// #/analysis/{id}, #/alerts/{id}). Views get a context object and return an unmount function.

import { ArenaClient } from "/static/arena-realtime.js";
import { Session } from "./session.js";
import { connectionIndicator } from "./connection.js";
import { loginView, completeLogin, completeInvite } from "./login.js";
import { boardView } from "./board.js";
import { analysisView } from "./analysis.js";
import { alertsView } from "./alerts.js";
import { h, replace } from "./dom.js";

const VIEWS = { board: boardView, analysis: analysisView, alerts: alertsView };

const session = new Session();
const root = document.getElementById("view");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const logoutButton = document.getElementById("logout");
const noticeBox = document.getElementById("notice");
let client = null;
let unmount = null;
let noticeTimer = null;

function notice(text, kind = "info") {
  clearTimeout(noticeTimer);
  noticeBox.textContent = text;
  noticeBox.dataset.kind = kind;
  noticeBox.hidden = false;
  noticeTimer = setTimeout(() => {
    noticeBox.hidden = true;
  }, 6000);
}

function startClient() {
  if (client) return client;
  const url = `${location.origin.replace(/^http/, "ws")}/ws`;
  client = new ArenaClient(url, { getToken: () => session.accessToken() });
  connectionIndicator(client, document.getElementById("conn"));
  client.connect();
  return client;
}

function stopClient() {
  if (client) client.close();
  client = null;
}

/** "#/analysis/abc?request=x" -> {name: "analysis", params: ["abc"], query: URLSearchParams}. */
function route() {
  const [path, search = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name = "board", ...params] = path.split("/").filter(Boolean);
  return { name: VIEWS[name] ? name : "board", params, query: new URLSearchParams(search) };
}

function render() {
  if (unmount) unmount();
  unmount = null;
  if (!session.signedIn) {
    nav.hidden = true;
    logoutButton.hidden = true;
    who.textContent = "";
    stopClient();
    unmount = loginView(root, { session, notice });
    return;
  }
  const user = session.user;
  nav.hidden = false;
  logoutButton.hidden = false;
  who.textContent = `${user.email} · ${user.role}`;
  const { name, params, query } = route();
  for (const link of nav.querySelectorAll("a")) {
    link.classList.toggle("active", link.dataset.view === name);
  }
  const context = { session, client: startClient(), user, notice, params, query };
  const container = h("section", { class: `view view-${name}`, "data-view": name });
  replace(root, container);
  unmount = VIEWS[name](container, context);
}

session.addEventListener("change", (event) => {
  // Keep the open WebSocket authenticated with the rotated access token.
  if (client && client.state === "connected" && event.detail.reason !== "signed in") {
    session.accessToken().then((token) => client.refresh(token)).catch(() => {});
  }
});
session.addEventListener("signedout", (event) => {
  const reason = event.detail.reason;
  if (reason === "signed out") notice("Signed out.");
  else notice(`Signed out: ${reason}`, "error");
  render();
});
logoutButton.addEventListener("click", () => session.logout());
window.addEventListener("hashchange", render);

async function start() {
  if (location.pathname === "/login" || location.pathname === "/invite") {
    const complete = location.pathname === "/login" ? completeLogin : completeInvite;
    const ok = await complete(session, notice);
    history.replaceState(null, "", ok ? "/#/board" : "/");
  }
  render();
}

start();
