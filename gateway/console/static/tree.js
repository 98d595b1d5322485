// A topic's partitions as a graph: one row per generation (a partition sits one row below
// the deepest of its parents), and each partition drawn across the width of its hash range,
// so the row of active partitions always tiles the whole key space. Lines join parents to
// children: two lines out of a box are a split, two into one a merge.

import { s } from "./dom.js";

const SPACE = 2n ** 64n;
const ROW = 52;
const BOX = 32;

/** Where a hash point lies in the key space, from 0 to 1. */
export function fraction(point) {
  return Number((BigInt(point) * 1000000n) / SPACE) / 1000000;
}

function depths(partitions) {
  const byId = new Map(partitions.map((p) => [p.id, p]));
  const depth = new Map();
  const of = (p) => {
    if (!depth.has(p.id)) {
      const parents = p.parents.map((id) => byId.get(id)).filter(Boolean);
      depth.set(p.id, parents.length ? 1 + Math.max(...parents.map(of)) : 0);
    }
    return depth.get(p.id);
  };
  partitions.forEach(of);
  return depth;
}

/** The lineage graph of a topic's partitions (its describe's "partitions"), drawn for a
 * box this many pixels wide (drawn again at the next update when the window changes). */
export function lineage(partitions, width) {
  const WIDTH = Math.max(240, Math.round(width) || 960);
  const depth = depths(partitions);
  const rows = Math.max(0, ...depth.values()) + 1;
  const height = rows * ROW;
  const place = new Map();
  for (const p of partitions) {
    const x = fraction(p.hash_range.start) * WIDTH;
    const w = Math.max(fraction(p.hash_range.end) * WIDTH - x, 4);
    place.set(p.id, { x: x + 1, y: depth.get(p.id) * ROW + 4, w: w - 2 });
  }
  const edges = [];
  for (const p of partitions) {
    const to = place.get(p.id);
    for (const parent of p.parents) {
      const from = place.get(parent);
      if (!from) continue;
      const x1 = Math.min(Math.max(to.x + to.w / 2, from.x), from.x + from.w);
      const x2 = Math.min(Math.max(from.x + from.w / 2, to.x), to.x + to.w);
      edges.push(
        s("line", { class: "edge", x1, y1: from.y + BOX, x2, y2: to.y, "aria-hidden": "true" }),
      );
    }
  }
  const active = partitions.filter((p) => p.state === "active").length;
  const nodes = partitions.map((p) => {
    const at = place.get(p.id);
    const label = at.w > 10 * String(p.id).length + 14 ? `P${p.id}` : "";
    return s(
      "g",
      { class: `node ${p.state}`, "data-partition": p.id, "data-state": p.state },
      s("title", null, `partition ${p.id}, ${p.state}, offsets ${p.start_offset} to ${p.end_offset}`),
      s("rect", { x: at.x, y: at.y, width: at.w, height: BOX, rx: 4 }),
      label ? s("text", { x: at.x + at.w / 2, y: at.y + BOX / 2 + 5 }, label) : null,
    );
  });
  return s(
    "svg",
    {
      class: "lineage",
      viewBox: `0 0 ${WIDTH} ${height}`,
      width: WIDTH,
      height,
      role: "img",
      "aria-label": `Partition lineage: ${partitions.length} partitions, ${active} active, ${rows} generations; the table below lists them`,
    },
    edges,
    nodes,
  );
}

/** A partition's hash range as a bar over the whole key space. */
export function rangeBar(range) {
  const start = fraction(range.start);
  const end = fraction(range.end);
  const share = ((end - start) * 100).toFixed(1);
  return s(
    "svg",
    {
      class: "range",
      viewBox: "0 0 100 10",
      preserveAspectRatio: "none",
      role: "img",
      "aria-label": `${share}% of the key space, from ${range.start} to ${range.end}`,
    },
    s("rect", { class: "space", x: 0, y: 0, width: 100, height: 10 }),
    s("rect", { class: "held", x: start * 100, y: 0, width: Math.max((end - start) * 100, 0.5), height: 10 }),
  );
}
