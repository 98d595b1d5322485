// Throughput over the last minutes, per partition: the console keeps the samples it saw
// (from the topic's event stream, or from polling its describe) and draws each partition's
// as a small line.

import { s } from "./dom.js";

const KEEP_MS = 5 * 60 * 1000;

export class ThroughputHistory {
  constructor() {
    this.samples = new Map(); // partition -> [{t, bytes, records}]
  }

  add(t, rows) {
    for (const row of rows) {
      const list = this.samples.get(row.partition) ?? [];
      list.push({ t, bytes: row.bytes_per_s, records: row.records_per_s });
      while (list.length && list[0].t < t - KEEP_MS) list.shift();
      this.samples.set(row.partition, list);
    }
  }

  latest(partition) {
    const list = this.samples.get(partition);
    return list?.length ? list[list.length - 1] : null;
  }

  /** A line of the partition's records per second over the last minutes (at least one:
   * the time axis grows with what was seen, up to five). */
  sparkline(partition, now) {
    const list = this.samples.get(partition) ?? [];
    const span = Math.min(KEEP_MS, Math.max(60000, list.length ? now - list[0].t : 0));
    const top = Math.max(1, ...list.map((p) => p.records));
    const points = list
      .map((p) => {
        const x = 100 - ((now - p.t) / span) * 100;
        return `${x.toFixed(1)},${(19 - (p.records / top) * 18).toFixed(1)}`;
      })
      .join(" ");
    const minutes = Math.round(span / 60000);
    return s(
      "svg",
      {
        class: "spark",
        viewBox: "0 0 100 20",
        preserveAspectRatio: "none",
        role: "img",
        "aria-label": `records per second over the last ${minutes} minutes, peak ${top.toFixed(1)}`,
      },
      s("polyline", { points }),
    );
  }
}
