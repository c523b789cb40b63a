// Sign-in: ask for a magic link, then complete it on /login#token=...; vendors invited to a
// request complete their invitation on /invite#token=... (the token is in the fragment, so it
// never reaches a server log).

import { h, replace, describeError } from "./dom.js";

/** Consume the magic link in the URL; true when signed in. */
export async function completeLogin(session, notice) {
  const token = new URLSearchParams(location.hash.replace(/^#/, "")).get("token");
  if (!token) {
    notice("This sign-in link has no token.", "error");
    return false;
  }
  try {
    const user = await session.verify(token);
    notice(`Signed in as ${user.email}`);
    return true;
  } catch (error) {
    notice(`Sign-in failed: ${describeError(error)}`, "error");
    return false;
  }
}

/** Accept the vendor invitation in the URL (/invite#token=...); true when signed in. */
export async function completeInvite(session, notice) {
  const token = new URLSearchParams(location.hash.replace(/^#/, "")).get("token");
  if (!token) {
    notice("This invitation link has no token.", "error");
    return false;
  }
  try {
    const user = await session.acceptInvite(token);
    notice(`Invitation accepted: signed in as ${user.email} (vendor)`);
    return true;
  } catch (error) {
    notice(`Invitation failed: ${describeError(error)}`, "error");
    return false;
  }
}

export function loginView(root, { session }) {
  const email = h("input", { type: "email", name: "email", required: true, autocomplete: "email", placeholder: "you@example.com" });
  const status = h("p", { class: "form-status", "data-testid": "login-status" });
  const form = h(
    "form",
    {
      class: "card login",
      onsubmit: async (event) => {
        event.preventDefault();
        status.textContent = "Sending…";
        status.dataset.kind = "";
        try {
          const answer = await session.requestLink(email.value.trim());
          status.textContent = `${answer.message} Open the link in this browser to sign in.`;
        } catch (error) {
          status.textContent = describeError(error);
          status.dataset.kind = "error";
        }
      },
    },
    h("h1", {}, "Sign in"),
    h("p", {}, "Enter your e-mail address and we send you a one-time sign-in link (valid for 15 minutes)."),
    h("label", {}, "E-mail ", email),
    h("button", { type: "submit" }, "Send sign-in link"),
    status,
    h(
      "details",
      { class: "help" },
      h("summary", {}, "Running locally? Where is my link?"),
      h(
        "p",
        {},
        "In development the service uses the console e-mail backend (EMAIL_BACKEND=console): nothing is sent, ",
        "the message is written to the server's log instead. Look in the terminal running ",
        h("code", {}, "python3 dev.py serve"),
        " for the JSON line with ",
        h("code", {}, '"message": "email (console backend, not sent)"'),
        " and open the ",
        h("code", {}, "/login#token=…"),
        " link from its body in this browser.",
      ),
    ),
  );
  replace(root, form);
  email.focus();
  return () => {};
}
