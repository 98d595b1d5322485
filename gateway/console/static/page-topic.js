// One topic: its partition tree updating live as it splits and merges, throughput per
// partition over the last minutes, hot keys, producing a test record, tailing a partition,
// and the way to its consumer groups.

import { call, path, serverFeatures } from "./api.js";
import { ThroughputHistory } from "./chart.js";
import { field, fill, h, rate, say, table } from "./dom.js";
import { repeat } from "./poll.js";
import { follow } from "./sse.js";
import { Tail } from "./tail.js";
import { lineage, rangeBar } from "./tree.js";

function groupHref(topic, group) {
  return `#/topics/${encodeURIComponent(topic)}/groups/${encodeURIComponent(group)}`;
}

// The topic's groups with their lag (the first page: the busiest topics have a few).
function groupRows(topic, groups) {
  if (!groups.length) return h("p", null, "No consumer groups yet.");
  return table(
    null,
    ["Group", "Lag"],
    groups.map((g) =>
      h(
        "tr",
        { "data-group": g.group },
        h("th", { scope: "row" }, h("a", { href: groupHref(topic, g.group) }, g.group)),
        h("td", { class: "num", "data-lag": g.lag }, g.lag),
      ),
    ),
  );
}

function partitionRows(topic, history) {
  const now = Date.now();
  return [...topic.partitions]
    .sort((a, b) => b.id - a.id)
    .map((p) => {
      const latest = history.latest(p.id);
      const active = p.state === "active";
      return h(
        "tr",
        { "data-partition": p.id, "data-state": p.state },
        h("th", { scope: "row" }, `P${p.id}`),
        h("td", null, h("span", { class: `state ${p.state}` }, p.state)),
        h("td", null, rangeBar(p.hash_range)),
        h("td", { class: "num" }, p.start_offset),
        h("td", { class: "num", "data-end": p.end_offset }, p.end_offset),
        h("td", null, p.worker !== undefined ? `worker ${p.worker}` : p.node ?? "this process"),
        h("td", { class: "num" }, active && latest ? rate(latest.records, "rec") : "–"),
        h("td", null, active ? history.sparkline(p.id, now) : "sealed"),
        h("td", null, p.parents.length ? p.parents.map((id) => `P${id}`).join(", ") : "–"),
        h("td", null, p.children.length ? p.children.map((id) => `P${id}`).join(", ") : "–"),
      );
    });
}

function hotKeys(topic) {
  const keys = topic.autoscale?.hot_keys ?? [];
  if (!keys.length) return h("p", null, "No hot keys right now.");
  return table(
    null,
    ["Key", "Partition", "Records", "Bytes", "Share"],
    keys.map((k) =>
      h(
        "tr",
        null,
        h("td", { class: "data" }, k.key ?? `${k.key_b64} (base64)`),
        h("td", null, `P${k.partition}`),
        h("td", { class: "num" }, rate(k.records_per_s, "rec")),
        h("td", { class: "num" }, rate(k.bytes_per_s, "B")),
        h("td", { class: "num" }, `${Math.round(k.share * 100)}%`),
      ),
    ),
  );
}

export function render(main, [name]) {
  document.title = `${name} · eventbus console`;
  const history = new ThroughputHistory();
  let current = null;
  let stopped = false;
  const summary = h("p", { class: "summary" }, "Loading…");
  const graph = h("figure", { id: "lineage", class: "card" });
  const details = h("div", { id: "partitions" });
  const hot = h("div", { id: "hot-keys" });
  const mode = h("p", { class: "hint" });
  const tail = new Tail(name);

  const draw = () => {
    if (current === null) return;
    const active = current.partitions.filter((p) => p.state === "active");
    const records = active.reduce((sum, p) => sum + (history.latest(p.id)?.records ?? 0), 0);
    fill(
      summary,
      `${active.length} active of ${current.partitions.length} partitions · ${rate(records, "records")}`,
    );
    fill(
      graph,
      lineage(current.partitions, graph.clientWidth - 34),
      h("figcaption", null, "Lineage: each row a generation, each box as wide as its hash range; blue active, grey sealed."),
    );
    fill(
      details,
      table(
        "Partitions, newest first",
        ["Partition", "State", "Hash range", "Start", "End", "Worker", "Now", "Records/s, last minutes", "Parents", "Children"],
        partitionRows(current, history),
      ),
    );
    fill(hot, hotKeys(current));
    tail.partitions(current.partitions);
  };
  const described = (topic, throughput) => {
    current = topic;
    if (throughput) history.add(Date.now(), topic.autoscale?.throughput ?? []);
    draw();
  };

  // Live: the topic's event stream where the server has it; else (or when the stream is
  // refused) its describe every 2 s. Hot keys come with describe only, so the stream is
  // joined by a slower describe.
  let stopPolling = null;
  let stream = null;
  const poll = (everyMs, throughput) => {
    stopPolling?.();
    stopPolling = repeat(async () => described(await call("GET", path`/v1/topics/${name}`), throughput), everyMs);
  };
  serverFeatures().then((features) => {
    if (stopped) return;
    if (!features.topicEvents) {
      mode.textContent = "Updated every 2 s.";
      poll(2000, true);
      return;
    }
    mode.textContent = "Live: the server streams this topic's changes.";
    stream = follow(path`/v1/topics/${name}/events?interval_ms=2000`, {
      event(type, data) {
        if (type === "topic") described(data, false);
        else if (type === "throughput") {
          history.add(data.ts_ms, data.partitions);
          // The ticks carry the active partitions' ends: the table's offsets stay current.
          for (const row of data.partitions) {
            const partition = current?.partitions.find((p) => p.id === row.partition);
            if (partition && row.end_offset !== undefined) partition.end_offset = row.end_offset;
          }
          draw();
        } else if (type === "deleted") say(`Topic ${name} was deleted.`);
      },
      refused(error) {
        if (error.status === 401) return;
        mode.textContent = `Updated every 2 s (the stream was refused: ${error.message}).`;
        poll(2000, true);
      },
    });
    poll(10000, false);
  });

  const key = h("input", { name: "key", autocomplete: "off" });
  const value = h("textarea", { name: "value", rows: 3, required: true });
  const produced = h("output", { class: "result", "aria-live": "polite" });
  const produce = async (event) => {
    event.preventDefault();
    const record = { value: value.value };
    if (key.value) record.key = key.value;
    try {
      const answer = await call("POST", path`/v1/topics/${name}/records`, { records: [record] });
      const at = answer.offsets[0];
      produced.textContent = `Written to P${at.partition} at offset ${at.offset}.`;
    } catch (error) {
      produced.textContent = `Refused: ${error.message}`;
    }
  };

  const group = h("input", { name: "group", required: true, autocomplete: "off" });
  const openGroup = (event) => {
    event.preventDefault();
    location.hash = groupHref(name, group.value);
  };
  const groups = h("div", { id: "groups" });
  const stopGroups = repeat(async () => {
    const page = await call("GET", path`/v1/topics/${name}/groups?limit=50`);
    fill(groups, groupRows(name, page.groups));
  }, 5000);

  fill(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/topics" }, "Topics"), " / ", name),
    h("h1", null, name),
    summary,
    h("section", { "aria-labelledby": "h-tree" }, h("h2", { id: "h-tree" }, "Partition tree"), mode, graph, details),
    h("section", { "aria-labelledby": "h-hot" }, h("h2", { id: "h-hot" }, "Hot keys"), hot),
    h(
      "div",
      { class: "columns" },
      h(
        "form",
        { class: "card", "aria-labelledby": "h-produce", onsubmit: produce },
        h("h2", { id: "h-produce" }, "Produce a test record"),
        field("Key (optional)", key),
        field("Value", value),
        h("button", { type: "submit" }, "Produce"),
        produced,
      ),
      h(
        "form",
        { class: "card", "aria-labelledby": "h-groups", onsubmit: openGroup },
        h("h2", { id: "h-groups" }, "Consumer groups"),
        groups,
        field("Group name", group),
        h("button", { type: "submit" }, "Show group"),
      ),
    ),
    tail.element,
  );
  return () => {
    stopped = true;
    stopPolling?.();
    stopGroups();
    stream?.close();
    tail.stop();
  };
}
