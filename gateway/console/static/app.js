// The console's shell: who is signed in, the navigation, and which page the address's
// fragment (#/topics/orders) shows. Each page's render() answers a function that stops
// what it runs (timers, streams) when another page is shown.

import { onSignOut, session, signOut } from "./api.js";
import { fill, h } from "./dom.js";
import * as group from "./page-group.js";
import * as signin from "./page-signin.js";
import * as tenant from "./page-tenant.js";
import * as tenants from "./page-tenants.js";
import * as topic from "./page-topic.js";
import * as topics from "./page-topics.js";

const TENANT_PAGES = [
  [/^#\/topics\/([^/]+)\/groups\/([^/]+)$/, group],
  [/^#\/topics\/([^/]+)$/, topic],
  [/^#\/topics$/, topics],
];
const ADMIN_PAGES = [
  [/^#\/tenants\/([^/]+)$/, tenant],
  [/^#\/tenants$/, tenants],
];

let stopPage = null;
let notice = null;

function navigation(who) {
  const links = who === null ? [] : who.admin ? [["#/tenants", "Tenants"]] : [["#/topics", "Topics"]];
  fill(
    document.getElementById("nav"),
    links.map(([href, text]) =>
      h("a", { href, "aria-current": location.hash.startsWith(href) ? "page" : null }, text),
    ),
  );
  document.getElementById("who").textContent =
    who === null ? "" : who.admin ? "admin key" : "tenant key";
  document.getElementById("sign-out").hidden = who === null;
}

function show() {
  stopPage?.();
  stopPage = null;
  const main = document.getElementById("main");
  const who = session();
  navigation(who);
  if (who === null) {
    stopPage = signin.render(main, [], { notice, signedIn: show });
    notice = null;
    return;
  }
  for (const [pattern, page] of who.admin ? ADMIN_PAGES : TENANT_PAGES) {
    const match = location.hash.match(pattern);
    if (match) {
      stopPage = page.render(main, match.slice(1).map(decodeURIComponent));
      return;
    }
  }
  location.replace(who.admin ? "#/tenants" : "#/topics");
}

onSignOut((reason) => {
  notice = reason;
  show();
});
document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", () => {
  show();
  document.getElementById("main").focus();
});
show();
