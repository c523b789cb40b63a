// The connection badge: connecting / connected / reconnecting / recovered / lost history /
// disconnected. "recovered" means the client came back and every channel resumed without a
// gap; "lost history" means some channel could not be recovered and its view reloaded its
// state over REST instead.

const LABELS = {
  connecting: "connecting…",
  connected: "connected",
  reconnecting: "reconnecting…",
  recovered: "recovered",
  lost: "lost history · reloaded",
  closed: "disconnected",
};

export function connectionIndicator(client, badge) {
  let reconnected = false;
  const show = (state, title = "") => {
    badge.dataset.state = state;
    badge.textContent = LABELS[state];
    badge.title = title || `WebSocket: ${LABELS[state]}`;
  };
  show("connecting");
  client.addEventListener("state", (event) => {
    const { state, code, reason } = event.detail;
    if (state === "connected") {
      show(reconnected ? "recovered" : "connected");
    } else if (state === "reconnecting") {
      reconnected = true;
      show("reconnecting", code ? `closed with ${code} ${reason || ""}; retrying` : "");
    } else if (state === "closed") {
      show("closed", code ? `closed with ${code} ${reason || ""}` : "");
    } else {
      show("connecting");
    }
  });
  client.addEventListener("recovery", (event) => {
    if (!event.detail.recovered) show("lost", `history of ${event.detail.channel} was lost`);
  });
}
