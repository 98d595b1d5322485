// The admin key's home: every tenant, and making one (with its first key, shown once).

import { call } from "./api.js";
import { field, fill, h, say, table, time } from "./dom.js";
import { repeat } from "./poll.js";
import { secret } from "./page-tenant.js";

export function render(main) {
  document.title = "Tenants · eventbus console";
  const list = h("div", null, "Loading…");
  const made = h("div");
  const name = h("input", { name: "tenant", required: true, pattern: "[a-z0-9][a-z0-9\\-]{0,62}", autocomplete: "off" });
  const refresh = async () => {
    const { tenants } = await call("GET", "/v1/admin/tenants");
    fill(
      list,
      table(
        null,
        ["Tenant", "Plan", "Created"],
        tenants.map((t) =>
          h(
            "tr",
            { "data-tenant": t.name },
            h("th", { scope: "row" }, h("a", { href: `#/tenants/${encodeURIComponent(t.name)}` }, t.name)),
            h("td", null, t.plan?.name ?? "default prices"),
            h("td", null, time(t.created_ms)),
          ),
        ),
      ),
    );
  };
  const create = async (event) => {
    event.preventDefault();
    try {
      const tenant = await call("POST", "/v1/admin/tenants", { name: name.value });
      fill(made, secret(`Tenant ${tenant.name} made, with its first key`, tenant.api_key));
      name.value = "";
      await refresh();
    } catch (error) {
      say(`Could not make the tenant: ${error.message}`);
    }
  };
  fill(
    main,
    h("h1", null, "Tenants"),
    list,
    h(
      "form",
      { class: "card inline", "aria-labelledby": "h-new-tenant", onsubmit: create },
      h("h2", { id: "h-new-tenant" }, "Make a tenant"),
      field("Name", name),
      h("button", { type: "submit" }, "Make tenant"),
    ),
    made,
  );
  return repeat(refresh, 10000);
}
