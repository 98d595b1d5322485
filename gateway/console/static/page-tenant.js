// One tenant, for the admin key: what it uses, its quotas (and changing one), its keys
// (making and revoking them), and its bill for this month so far.

import { call, path } from "./api.js";
import { bytes, field, fill, h, say, table, time } from "./dom.js";

/** A new key's secret, shown once, selectable, with a warning. */
export function secret(title, key) {
  return h(
    "div",
    { class: "card secret", role: "alert" },
    h("h2", null, title),
    h("p", null, "Copy the key now: the server keeps only its hash and will not show it again."),
    h("code", { class: "data", tabindex: "0", "data-secret": "" }, key),
  );
}

function scopeText(scope) {
  if (typeof scope === "string") return scope;
  const topics = scope.topics ? ` on ${scope.topics.join(", ")}` : "";
  return `${scope.role}${topics}`;
}

export function render(main, [name]) {
  document.title = `${name} · eventbus console`;
  const base = path`/v1/admin/tenants/${name}`;
  const use = h("div");
  const quotas = h("div");
  const keys = h("div");
  const bill = h("div");
  const made = h("div");

  const revokeButton = (key) => {
    const cell = h("td");
    const ask = () =>
      fill(
        cell,
        h("button", { type: "button", class: "danger", onclick: revoke }, `Revoke ${key.key_id}`),
        " ",
        h("button", { type: "button", onclick: () => fill(cell, first()) }, "Cancel"),
      );
    const first = () => h("button", { type: "button", "data-key": key.key_id, onclick: ask }, "Revoke…");
    const revoke = async () => {
      try {
        await call("DELETE", `${base}/keys/${encodeURIComponent(key.key_id)}`);
        say(`Key ${key.key_id} revoked.`);
        await refresh();
      } catch (error) {
        say(`Could not revoke: ${error.message}`);
      }
    };
    return fill(cell, first());
  };

  const refresh = async () => {
    const [tenant, keyList, usage] = await Promise.all([
      call("GET", base),
      call("GET", `${base}/keys`),
      call("GET", path`/v1/admin/usage?tenant=${name}`),
    ]);
    const inUse = tenant.in_use ?? {};
    fill(
      use,
      h(
        "dl",
        { class: "facts" },
        h("dt", null, "Topics"),
        h("dd", null, inUse.topics ?? "–"),
        h("dt", null, "Active partitions"),
        h("dd", null, inUse.active_partitions ?? "–"),
        h("dt", null, "Stored"),
        h("dd", null, bytes(inUse.stored_bytes ?? 0)),
        h("dt", null, "Plan"),
        h("dd", null, tenant.plan?.name ?? "default prices"),
      ),
    );
    const overrides = tenant.quota_overrides ?? {};
    fill(
      quotas,
      table(
        null,
        ["Quota", "Effective", "Set for this tenant"],
        Object.entries(tenant.quotas).map(([quota, value]) =>
          h(
            "tr",
            { "data-quota": quota },
            h("th", { scope: "row" }, quota),
            h("td", { class: "num" }, value ?? "unlimited"),
            h("td", null, quota in overrides ? String(overrides[quota] ?? "unlimited") : "server default"),
          ),
        ),
      ),
      quotaForm(Object.keys(tenant.quotas)),
    );
    fill(
      keys,
      table(
        null,
        ["Key", "Scope", "Created", "Last used", ""],
        (keyList.keys ?? []).map((key) =>
          h(
            "tr",
            { "data-key": key.key_id },
            h("th", { scope: "row" }, key.key_id),
            h("td", null, scopeText(key.scope)),
            h("td", null, time(key.created_ms)),
            h("td", null, time(key.last_used_ms)),
            revokeButton(key),
          ),
        ),
      ),
    );
    const account = usage.tenants.find((t) => t.tenant === name);
    fill(
      bill,
      h("p", null, `From ${usage.from} to ${usage.to}`),
      account
        ? table(
            null,
            ["Item", "Quantity", "Unit", "Unit price (USD)", "Amount (USD)"],
            [
              ...account.line_items.map((item) =>
                h(
                  "tr",
                  null,
                  h("th", { scope: "row" }, item.item),
                  h("td", { class: "num" }, item.quantity),
                  h("td", null, item.unit),
                  h("td", { class: "num" }, item.unit_price_usd),
                  h("td", { class: "num" }, item.amount_usd),
                ),
              ),
              h("tr", { class: "total" }, h("th", { scope: "row", colspan: 4 }, "Total"), h("td", { class: "num", id: "bill-total" }, account.total_usd)),
            ],
          )
        : h("p", null, "No usage in this period."),
    );
  };

  const quotaForm = (names) => {
    const quota = h("select", { name: "quota" }, names.map((q) => h("option", { value: q }, q)));
    const value = h("input", { name: "value", autocomplete: "off", placeholder: "a number, unlimited or default" });
    const set = async (event) => {
      event.preventDefault();
      const text = value.value.trim();
      const wanted = text === "unlimited" ? null : text === "default" ? "default" : Number(text);
      if (typeof wanted === "number" && !Number.isInteger(wanted)) {
        say("A quota is a whole number, unlimited or default.");
        return;
      }
      try {
        await call("PATCH", base, { quotas: { [quota.value]: wanted } });
        say(`Quota ${quota.value} set.`);
        await refresh();
      } catch (error) {
        say(`Could not set the quota: ${error.message}`);
      }
    };
    return h(
      "form",
      { class: "row", "aria-label": "Set a quota", onsubmit: set },
      field("Quota", quota),
      field("Value", value),
      h("button", { type: "submit" }, "Set quota"),
    );
  };

  const scope = h(
    "select",
    { name: "scope" },
    ["full", "produce", "consume"].map((s) => h("option", { value: s }, s)),
  );
  const makeKey = async (event) => {
    event.preventDefault();
    try {
      const key = await call("POST", `${base}/keys`, { scope: scope.value });
      fill(made, secret(`Key ${key.key_id} made`, key.api_key));
      await refresh();
    } catch (error) {
      say(`Could not make the key: ${error.message}`);
    }
  };

  fill(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/tenants" }, "Tenants"), " / ", name),
    h("h1", null, `Tenant ${name}`),
    h("button", { type: "button", onclick: () => refresh().catch((error) => say(error.message)) }, "Refresh"),
    use,
    h("section", { "aria-labelledby": "h-keys" }, h("h2", { id: "h-keys" }, "API keys"), keys,
      h(
        "form",
        { class: "row", "aria-label": "Make a key", onsubmit: makeKey },
        field("Scope", scope),
        h("button", { type: "submit" }, "Make key"),
      ),
      made,
    ),
    h("section", { "aria-labelledby": "h-quotas" }, h("h2", { id: "h-quotas" }, "Quotas"), quotas),
    h("section", { "aria-labelledby": "h-bill" }, h("h2", { id: "h-bill" }, "Bill this month"), bill),
  );
  // Read once, and again after each change: a timer would redraw a half-confirmed revoke.
  refresh().catch((error) => say(error.message));
  return () => {};
}
