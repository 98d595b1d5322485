// Signing in: the key is checked against the API, then kept in this tab's session storage.

import { ApiError, signIn } from "./api.js";
import { field, fill, h } from "./dom.js";

export function render(main, _params, { notice, signedIn }) {
  document.title = "Sign in · eventbus console";
  const input = h("input", {
    type: "password",
    name: "key",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
  });
  const alert = h("p", { class: "alert", role: "alert" }, notice ?? "");
  const submit = async (event) => {
    event.preventDefault();
    alert.textContent = "";
    try {
      const role = await signIn(input.value.trim());
      const home = role === "admin" ? "#/tenants" : "#/topics";
      if (location.hash === home) signedIn();
      else location.hash = home; // shown by the hashchange
    } catch (error) {
      alert.textContent =
        error instanceof ApiError && error.status === 401
          ? "This key is not valid (unknown or revoked)."
          : `Could not sign in: ${error.message}`;
    }
  };
  fill(
    main,
    h(
      "form",
      { class: "card signin", "aria-labelledby": "signin-title", onsubmit: submit },
      h("h1", { id: "signin-title" }, "Sign in"),
      h(
        "p",
        null,
        "Paste an API key: a tenant's key shows its topics and groups; the admin key shows tenants, keys, quotas and bills. ",
        "The key stays in this tab only and is forgotten when it closes.",
      ),
      field("API key", input),
      h("button", { type: "submit" }, "Sign in"),
      alert,
    ),
  );
  input.focus();
  return () => {};
}
