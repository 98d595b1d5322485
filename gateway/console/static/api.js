// The public API, from the browser. The key lives in this tab's session storage only: it is
// sent as "Authorization: Bearer" on each request, never put in a URL, and forgotten when
// the tab closes or the server answers 401 (a key revoked or unknown).

const KEY = "eventbus.console.key";
const ROLE = "eventbus.console.role";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details ?? {};
  }
}

const signOutListeners = new Set();

export function onSignOut(listener) {
  signOutListeners.add(listener);
}

export function session() {
  const key = sessionStorage.getItem(KEY);
  return key ? { key, admin: sessionStorage.getItem(ROLE) === "admin" } : null;
}

export function signOut(reason) {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ROLE);
  for (const listener of signOutListeners) listener(reason);
}

/** A path with its placeholders filled and escaped: path`/v1/topics/${name}`. */
export function path(strings, ...values) {
  return strings.reduce(
    (out, part, i) => out + part + (i < values.length ? encodeURIComponent(values[i]) : ""),
    "",
  );
}

export function headers(key, more) {
  return { Authorization: `Bearer ${key ?? session()?.key ?? ""}`, ...more };
}

/** The error of a refused answer; a 401 for the signed-in key signs the console out. */
export async function refusal(response, key) {
  const body = await response.json().catch(() => null);
  const error = body?.error ?? {};
  const refused = new ApiError(
    response.status,
    error.code ?? "http_error",
    error.message ?? response.statusText,
    error.details,
  );
  if (response.status === 401 && key === undefined && session()) {
    signOut("The key is no longer valid (revoked or unknown): sign in again.");
  }
  return refused;
}

/** Call a route: answers the JSON body (null for 204), throws ApiError when refused. */
export async function call(method, route, body, { key, signal } = {}) {
  const init = { method, headers: headers(key), signal, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(route, init);
  if (!response.ok) throw await refusal(response, key);
  return response.status === 204 ? null : response.json();
}

/** Which kind of key this is: "tenant" or "admin" (an admin key is refused on tenant
 * routes with 403 forbidden); throws ApiError 401 for a key that is not valid. */
export async function signIn(key) {
  let role = "tenant";
  try {
    await call("GET", "/v1/topics?limit=1", undefined, { key });
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 403) throw error;
    await call("GET", "/v1/admin/tenants", undefined, { key });
    role = "admin";
  }
  sessionStorage.setItem(KEY, key);
  sessionStorage.setItem(ROLE, role);
  return role;
}

let features = null;

/** What this server serves, read from its OpenAPI document (public): the console streams
 * where the server has streams and polls where it has not. */
export function serverFeatures() {
  features ??= fetch("/openapi.json", { cache: "no-store" })
    .then((response) => response.json())
    .then((document) => {
      const paths = document.paths ?? {};
      const read = paths["/v1/topics/{topic}/partitions/{partition}/records"]?.get;
      return {
        topicEvents: "/v1/topics/{topic}/events" in paths,
        recordStream: JSON.stringify(read?.responses?.["200"] ?? {}).includes("text/event-stream"),
      };
    })
    .catch(() => ({ topicEvents: false, recordStream: false }));
  return features;
}
