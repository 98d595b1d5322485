// Tailing a partition: its records as they come, from its start or its end. Over a stream
// (text/event-stream) where the server has one, which follows a split into the children;
// else by reads that wait for records (wait_ms). Keys and values are shown as text.

import { call, path, serverFeatures } from "./api.js";
import { field, fill, h, say, time } from "./dom.js";
import { follow } from "./sse.js";

const SHOWN = 200;

export class Tail {
  constructor(topic) {
    this.topic = topic;
    this.known = [];
    this.running = null;
    this.choice = h("select", { name: "partition" });
    this.from = h(
      "select",
      { name: "from" },
      h("option", { value: "end" }, "new records only"),
      h("option", { value: "start" }, "the partition's start"),
    );
    this.button = h("button", { type: "submit" }, "Start tail");
    this.list = h("ol", { class: "records", "aria-label": "Records" });
    this.note = h("p", { class: "hint", role: "status" });
    this.element = h(
      "form",
      {
        class: "card",
        id: "tail",
        "aria-labelledby": "h-tail",
        onsubmit: (event) => {
          event.preventDefault();
          if (this.running) this.stop();
          else this.start();
        },
      },
      h("h2", { id: "h-tail" }, "Tail a partition"),
      h("div", { class: "row" }, field("Partition", this.choice), field("Start at", this.from), this.button),
      this.note,
      this.list,
    );
  }

  /** Keep the partition choices up to date with the topic. */
  partitions(list) {
    const ids = list.map((p) => p.id).sort((a, b) => a - b);
    this.known = list;
    if (ids.join() === [...this.choice.options].map((o) => o.value).join()) return;
    const chosen = this.choice.value;
    fill(
      this.choice,
      ids.map((id) => {
        const p = list.find((q) => q.id === id);
        return h("option", { value: id }, `P${id} (${p.state})`);
      }),
    );
    if (ids.map(String).includes(chosen)) this.choice.value = chosen;
  }

  show(record) {
    const data = record.value ?? `${record.value_b64} (base64)`;
    const key = record.key ?? (record.key_b64 ? `${record.key_b64} (base64)` : "no key");
    this.list.prepend(
      h(
        "li",
        { "data-partition": record.partition, "data-offset": record.offset },
        h("span", { class: "where" }, `P${record.partition} @${record.offset}`),
        h("span", { class: "when" }, time(record.timestamp_ms)),
        h("span", { class: "key data" }, key),
        h("span", { class: "value data" }, data.length > 500 ? `${data.slice(0, 500)}…` : data),
      ),
    );
    while (this.list.children.length > SHOWN) this.list.lastElementChild.remove();
  }

  async start() {
    const partition = Number(this.choice.value);
    const info = this.known.find((p) => p.id === partition);
    if (!info) return;
    const offset = this.from.value === "end" ? info.end_offset : null;
    fill(this.list);
    this.button.textContent = "Stop tail";
    this.note.textContent = `Tailing P${partition}…`;
    const features = await serverFeatures();
    const query = offset === null ? "" : `?offset=${offset}`;
    const route = path`/v1/topics/${this.topic}/partitions/${partition}/records` + query;
    this.running = features.recordStream ? this.stream(route) : this.poll(partition, offset);
  }

  stream(route) {
    return follow(route, {
      event: (type, data) => {
        if (type === "record") this.show(data);
        else if (type === "sealed") {
          this.note.textContent = `P${data.partition} was sealed at ${data.end_offset}; following its children ${data.children.map((c) => `P${c}`).join(", ")}.`;
        }
      },
      refused: (error) => this.ended(`The tail was refused: ${error.message}`),
      ended: (reason) => this.ended(`The tail ended (${reason}).`),
    });
  }

  poll(partition, from) {
    const stop = new AbortController();
    (async () => {
      let offset = from;
      while (!stop.signal.aborted) {
        const query = offset === null ? "?wait_ms=10000" : `?offset=${offset}&wait_ms=10000`;
        let answer;
        try {
          answer = await call(
            "GET",
            path`/v1/topics/${this.topic}/partitions/${partition}/records` + query,
            undefined,
            { signal: stop.signal },
          );
        } catch (error) {
          if (!stop.signal.aborted) this.ended(`The tail stopped: ${error.message}`);
          return;
        }
        answer.records.forEach((record) => this.show(record));
        offset = answer.next_offset;
        if (answer.sealed && offset >= answer.high_watermark) {
          const children = answer.children.map((c) => `P${c}`).join(", ");
          this.ended(`P${partition} is sealed and read to its end; its keys go on in ${children}.`);
          return;
        }
      }
    })();
    return { close: () => stop.abort() };
  }

  ended(text) {
    this.running = null;
    this.button.textContent = "Start tail";
    this.note.textContent = text;
    say(text);
  }

  stop() {
    this.running?.close();
    this.running = null;
    this.button.textContent = "Start tail";
    this.note.textContent = "Stopped.";
  }
}
