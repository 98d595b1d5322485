// Server-sent events over fetch(). EventSource cannot send an Authorization header, so the
// console reads the text/event-stream body itself: events are separated by a blank line,
// each made of "event:", "data:" and "id:" lines; lines starting with ":" are comments
// (keepalives). A stream that ends (the server's --max-stream-ms, a restart) is opened
// again with Last-Event-ID, so it goes on where it was.

import { headers, refusal } from "./api.js";

/** Each event of a response body, as {type, data, id} (data: the data lines joined). */
export async function readEvents(body, emit, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "message";
  let data = [];
  let id;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done || signal?.aborted) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, "");
        buffer = buffer.slice(end + 1);
        if (line === "") {
          if (data.length) emit({ type, data: data.join("\n"), id });
          type = "message";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "event") type = text;
        else if (name === "data") data.push(text);
        else if (name === "id") id = text;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

/**
 * Follow a stream until close() or an event that ends it for good.
 * on: {event(type, data, id), open(), refused(ApiError), ended(reason)}; data is parsed JSON.
 * An "end" event whose reason is "expired" or "shutdown" reconnects; any other ends.
 */
export function follow(route, on) {
  const stop = new AbortController();
  let lastId = null;
  (async () => {
    let backoff = 500;
    while (!stop.signal.aborted) {
      const sent = { Accept: "text/event-stream" };
      if (lastId !== null) sent["Last-Event-ID"] = lastId;
      let response;
      try {
        response = await fetch(route, {
          headers: headers(undefined, sent),
          signal: stop.signal,
          cache: "no-store",
        });
      } catch {
        if (stop.signal.aborted) return;
        await sleep(backoff, stop.signal);
        backoff = Math.min(backoff * 2, 10000);
        continue;
      }
      if (!response.ok) {
        on.refused?.(await refusal(response));
        return;
      }
      backoff = 500;
      on.open?.();
      let ended = null;
      try {
        await readEvents(
          response.body,
          (event) => {
            if (event.id !== undefined) lastId = event.id;
            const data = event.data ? JSON.parse(event.data) : null;
            if (event.type === "end") ended = data?.reason ?? "end";
            else on.event(event.type, data, event.id);
          },
          stop.signal,
        );
      } catch {
        // The connection broke: open it again.
      }
      if (ended !== null && ended !== "expired" && ended !== "shutdown") {
        on.ended?.(ended);
        return;
      }
      await sleep(ended === null ? backoff : 200, stop.signal);
    }
  })();
  return { close: () => stop.abort() };
}
