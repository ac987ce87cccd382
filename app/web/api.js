// Calls to the service's HTTP API (DESIGN §3), same origin only. Every failure becomes an ApiError whose
// message is the API's own `detail` sentence, so the page shows what the server said, not a status code.

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page, say): fall through to the status line
  }
  if (body && typeof body.detail === "string") {
    return new ApiError(response.status, body.error || "error", body.detail);
  }
  return new ApiError(response.status, "http_error", `The server answered ${response.status} ${response.statusText}.`);
}

export async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// POST /segment with one form field per modality. `files` is [{field, file}]. Returns the Response
// (already checked for success) so the caller reads JSON, a blob, or the headers it needs.
export async function segment(files, query) {
  const form = new FormData();
  for (const { field, file } of files) form.append(field, file, file.name);
  const params = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== ""));
  const response = await fetch(`/segment?${params}`, { method: "POST", body: form });
  if (!response.ok) throw await failure(response);
  return response;
}

// X-Input-Warnings: a header on every format (DESIGN §3); joined by "; " or JSON-encoded.
export function headerWarnings(response) {
  const raw = response.headers.get("X-Input-Warnings");
  if (!raw) return [];
  try {
    const parsed = JSON.parse(raw);
    if (Array.isArray(parsed)) return parsed.map(String);
  } catch {
    // plain text
  }
  return raw.split(/;\s*/).filter(Boolean);
}
