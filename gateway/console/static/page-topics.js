// A tenant's topics with their throughput, and creating one.

import { call, path } from "./api.js";
import { field, fill, h, rate, say, table, time } from "./dom.js";
import { repeat } from "./poll.js";

function sums(topic) {
  const rows = topic.autoscale?.throughput ?? [];
  return {
    active: topic.partitions.filter((p) => p.state === "active").length,
    records: rows.reduce((sum, row) => sum + row.records_per_s, 0),
    bytes: rows.reduce((sum, row) => sum + row.bytes_per_s, 0),
  };
}

export function render(main) {
  document.title = "Topics · eventbus console";
  const list = h("div", { "aria-busy": "true" }, "Loading…");
  const name = h("input", {
    name: "topic",
    required: true,
    maxlength: 249,
    pattern: "[A-Za-z0-9._\\-]+",
    autocomplete: "off",
  });
  const refresh = async () => {
    const page = await call("GET", "/v1/topics?limit=100");
    const described = await Promise.all(
      page.topics.map((t) => call("GET", path`/v1/topics/${t.name}`)),
    );
    const rows = described.map((topic) => {
      const sum = sums(topic);
      return h(
        "tr",
        { "data-topic": topic.name },
        h("th", { scope: "row" }, h("a", { href: `#/topics/${encodeURIComponent(topic.name)}` }, topic.name)),
        h("td", { class: "num" }, sum.active),
        h("td", { class: "num" }, rate(sum.records, "records")),
        h("td", { class: "num" }, rate(sum.bytes, "B")),
        h("td", null, time(topic.created_ms)),
      );
    });
    fill(
      list,
      rows.length
        ? table(null, ["Topic", "Active partitions", "Records", "Bytes", "Created"], rows)
        : h("p", null, "No topics yet."),
      page.next_after ? h("p", null, "Showing the first 100 topics.") : null,
    );
    list.removeAttribute("aria-busy");
  };
  const stop = repeat(refresh, 5000);
  const create = async (event) => {
    event.preventDefault();
    try {
      await call("PUT", path`/v1/topics/${name.value}`, {});
      say(`Topic ${name.value} is ready.`);
      name.value = "";
      await refresh();
    } catch (error) {
      say(`Could not create the topic: ${error.message}`);
    }
  };
  fill(
    main,
    h("h1", null, "Topics"),
    h("section", { "aria-label": "Topic list" }, list),
    h(
      "form",
      { class: "card inline", "aria-labelledby": "create-topic", onsubmit: create },
      h("h2", { id: "create-topic" }, "Create a topic"),
      field("Name", name),
      h("button", { type: "submit" }, "Create topic"),
    ),
  );
  return stop;
}
