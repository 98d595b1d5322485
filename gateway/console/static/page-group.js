// One consumer group: its members and what each is assigned, and per partition the
// committed offset, the end and the lag (the topic page lists the groups).

import { ApiError, call, path } from "./api.js";
import { fill, h, table, time } from "./dom.js";
import { repeat } from "./poll.js";

export function render(main, [topic, group]) {
  document.title = `${group} on ${topic} · eventbus console`;
  const lag = h("p", { class: "big", id: "group-lag" }, "…");
  const members = h("div", { id: "members" });
  const partitions = h("div");
  const refresh = async () => {
    let state;
    try {
      state = await call("GET", path`/v1/topics/${topic}/groups/${group}`);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        fill(lag, "No such group yet: it appears once a member fetches or a seek places it.");
        lag.removeAttribute("data-lag");
        return;
      }
      throw error;
    }
    fill(lag, `Lag: ${state.lag} records · generation ${state.generation}`);
    lag.setAttribute("data-lag", state.lag);
    fill(
      members,
      state.members.length
        ? table(
            null,
            ["Member", "Assignment", "Last seen", "Session timeout"],
            state.members.map((m) =>
              h(
                "tr",
                null,
                h("td", { class: "data" }, m.member_id),
                h("td", null, m.assignment.map((p) => `P${p}`).join(", ") || "none"),
                h("td", null, time(m.last_seen_ms)),
                h("td", { class: "num" }, `${m.session_timeout_ms / 1000} s`),
              ),
            ),
          )
        : h("p", null, "No live members."),
    );
    fill(
      partitions,
      table(
        null,
        ["Partition", "State", "Committed", "End", "Lag", "Owner", "Drained"],
        state.partitions.map((p) =>
          h(
            "tr",
            { "data-partition": p.partition },
            h("th", { scope: "row" }, `P${p.partition}`),
            h("td", null, h("span", { class: `state ${p.state}` }, p.state)),
            h("td", { class: "num" }, p.committed ?? "none"),
            h("td", { class: "num" }, p.end_offset),
            h("td", { class: "num" }, p.lag),
            h("td", { class: "data" }, p.member_id ?? "–"),
            h("td", null, p.drained ? "yes" : "no"),
          ),
        ),
      ),
    );
  };
  fill(
    main,
    h(
      "p",
      { class: "crumbs" },
      h("a", { href: "#/topics" }, "Topics"),
      " / ",
      h("a", { href: `#/topics/${encodeURIComponent(topic)}` }, topic),
      " / groups / ",
      group,
    ),
    h("h1", null, `Group ${group}`),
    lag,
    h("section", { "aria-labelledby": "h-members" }, h("h2", { id: "h-members" }, "Members"), members),
    h("section", { "aria-labelledby": "h-parts" }, h("h2", { id: "h-parts" }, "Partitions"), partitions),
  );
  return repeat(refresh, 2000);
}
