// The node's HTTP API, as the UI uses it. Every failure becomes an Error
// whose message is the API's own (OpenAI-shaped) error message.

export interface Conversation {
  id: string;
  title: string;
  model: string;
  created_at: number;
  updated_at: number;
  instructions: string | null;
  temperature: number | null;
  max_tokens: number | null;
  messages?: Message[];
}

/** A conversation's own settings; `null` clears one. */
export interface ChatSettings {
  instructions?: string | null;
  temperature?: number | null;
  max_tokens?: number | null;
}

export interface Message {
  id: number;
  role: "system" | "user" | "assistant";
  content: string;
  model?: string | null;
  node_id?: string | null;
  tokens_per_sec?: number | null;
  note?: string | null;
}

export interface ModelLocation {
  node_id: string | null;
  hostname: string;
  local: boolean;
  loaded: boolean;
}

export interface Model {
  id: string;
  rbee: { loaded: boolean; architecture: string; quantization: string; size_bytes: number; nodes: ModelLocation[]; source?: string };
}

export interface LoadedModel {
  id: string;
  slots: number;
  busy: number;
  queued: number;
  decode_tps: number;
}

/** A node of the swarm; `status` "suspect": its probes went unanswered
 * (still routed to), "left": it shut down and said so. */
export interface Peer {
  node_id: string;
  up: boolean;
  status: "up" | "suspect" | "down" | "left";
  last_seen_ms: number;
  local: boolean;
  rtt_ms: number | null;
  record: {
    hostname: string;
    devices: string[];
    ram_total_bytes: number;
    ram_free_bytes: number;
    models_on_disk: { id: string; size_bytes: number }[];
    models_loaded: LoadedModel[];
    share: boolean;
  };
}

export interface Swarm {
  enabled: boolean;
  message?: string;
  node_id?: string;
  swarm_key_fingerprint?: string;
  peers: Peer[];
}

export interface Pull {
  id: number;
  repo: string;
  file: string;
  revision: string;
  state: "running" | "done" | "failed" | "cancelled";
  done_bytes: number;
  total_bytes: number | null;
  model: string | null;
  error: string | null;
  from_peers: string[];
  bytes_per_s: number | null;
  note: string | null;
}

/// A model the Models page recommends (`GET /api/models/recommended`).
export interface Offer {
  name: string;
  repo: string;
  file: string;
  size_bytes: number;
  kind: "chat" | "code" | "embeddings";
  about: string;
  needs_bytes: number;
  fits: boolean;
  installed: string | null;
}

/// A GGUF repository the hub search found (`GET /api/hub/search`).
export interface HubRepo {
  repo: string;
  downloads: number;
  likes: number;
}

/// One GGUF file of a repository (`GET /api/hub/files`).
export interface HubFile {
  file: string;
  size_bytes: number;
  quantization: string;
  needs_bytes: number;
  fits: boolean;
  fits_on: string[];
}

export interface Settings {
  config_file: string | null;
  listen: string;
  api_keys: string[];
  share: boolean;
  swarm: { enabled: boolean; fingerprint: string | null; join_code: string | null };
  saved: { listen: string | null; api_keys: string[] | null; swarm_fingerprint: string | null; swarm_join_code: string | null };
  restart_required: string[];
  overridden: string[];
  can_restart: boolean;
}

export interface SettingsChange {
  listen?: string;
  api_keys?: string[];
  share?: boolean;
  swarm_key?: string | null;
}

/// A size as people read it: "253 MB", "1.1 GB".
export const sizeLabel = (b: number) => (b >= 1e9 ? `${(b / 1e9).toFixed(1)} GB` : `${Math.round(b / 1e6)} MB`);

/// Where a model is: "this machine (loaded), ada-pc" and so on.
export function whereLabel(m: Model): string {
  return m.rbee.nodes.map((n) => (n.local ? "this machine" : n.hostname) + (n.loaded ? " (loaded)" : "")).join(", ");
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new Error(`The rbee node does not answer (${(e as Error).message}). Is it running?`);
  }
  return answer<T>(res.status, await res.text(), `${method} ${path}`);
}

/// A node's answer: its JSON, or an Error with the node's own message
/// (OpenAI's `error.message`) when the status is not a success.
function answer<T>(status: number, text: string, what: string): T {
  let json: any = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON: reported below */
  }
  if (status < 200 || status >= 300) throw new Error(json?.error?.message ?? `${what}: HTTP ${status}`);
  return json as T;
}

export const api = {
  conversations: (q?: string) =>
    call<{ data: Conversation[] }>("GET", `/api/conversations${q ? `?q=${encodeURIComponent(q)}` : ""}`).then((r) => r.data),
  conversation: (id: string) => call<Conversation>("GET", `/api/conversations/${id}`),
  createConversation: (title: string, model: string) => call<Conversation>("POST", "/api/conversations", { title, model }),
  updateConversation: (id: string, fields: { title?: string; model?: string } & ChatSettings) => call<Conversation>("PATCH", `/api/conversations/${id}`, fields),
  deleteConversation: (id: string) => call<unknown>("DELETE", `/api/conversations/${id}`),
  addMessage: (id: string, m: Omit<Message, "id">) => call<Message>("POST", `/api/conversations/${id}/messages`, m),
  trimFrom: (id: string, messageId: number) => call<unknown>("DELETE", `/api/conversations/${id}/messages/${messageId}`),
  models: () => call<{ data: Model[] }>("GET", "/v1/models").then((r) => r.data),
  swarm: () => call<Swarm>("GET", "/api/swarm"),
  deleteModel: (id: string) => call<unknown>("DELETE", `/v1/models/${encodeURIComponent(id)}`),
  pull: (repo: string, file: string) => call<Pull>("POST", "/api/models/pull", { repo, file }),
  hubSearch: (q: string) => call<{ data: HubRepo[] }>("GET", `/api/hub/search?q=${encodeURIComponent(q)}`).then((r) => r.data),
  hubFiles: (repo: string) => call<{ memory_bytes: number; data: HubFile[] }>("GET", `/api/hub/files?repo=${encodeURIComponent(repo)}`),
  pulls: () => call<{ data: Pull[] }>("GET", "/api/models/pulls").then((r) => r.data),
  cancelPull: (id: number) => call<Pull>("DELETE", `/api/models/pulls/${id}`),
  recommended: () => call<{ memory_bytes: number; data: Offer[] }>("GET", "/api/models/recommended"),
  settings: () => call<Settings>("GET", "/api/settings"),
  updateSettings: (change: SettingsChange) => call<Settings>("PATCH", "/api/settings", change),
  newSwarm: () => call<Settings>("POST", "/api/settings/new-swarm"),
  restart: () => call<unknown>("POST", "/api/restart"),
};

/// Uploads a GGUF file into this machine's store, reporting the fraction
/// sent (XMLHttpRequest: fetch cannot report upload progress).
export function importModel(file: File, onProgress: (fraction: number) => void): Promise<Model> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/models/import?filename=${encodeURIComponent(file.name)}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new Error("The rbee node does not answer. Is it running?"));
    xhr.onload = () => {
      try {
        resolve(answer<Model>(xhr.status, xhr.responseText, "import"));
      } catch (e) {
        reject(e);
      }
    };
    xhr.send(file);
  });
}

/// The registry, live: `onData` at once and on every change. Returns a
/// function that stops listening.
export function watchSwarm(onData: (s: Swarm) => void, onError: (message: string) => void): () => void {
  const source = new EventSource("/api/swarm/events");
  source.onmessage = (e) => onData(JSON.parse(e.data) as Swarm);
  // EventSource reconnects by itself; say so while it does.
  source.onerror = () => onError("Lost the node's event stream; reconnecting…");
  return () => source.close();
}

export interface StreamResult {
  content: string;
  nodeId: string;
  tokensPerSec: number | null;
  finish: string | null;
}

/// The longest answer to ask for (Settings; unset: until the model stops).
export function maxTokens(): number | undefined {
  const n = Number(localStorage.getItem("rbee.maxTokens"));
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

/// Streams a chat completion, calling `onText` with the whole text so far.
/// Resolves when the answer ends or `signal` aborts (with what came so far).
export async function streamChat(
  model: string,
  messages: { role: string; content: string }[],
  onText: (text: string) => void,
  signal: AbortSignal,
  settings: { temperature?: number | null; max_tokens?: number | null } = {},
): Promise<StreamResult> {
  const out: StreamResult = { content: "", nodeId: "", tokensPerSec: null, finish: null };
  let res: Response;
  try {
    res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model,
        messages,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: settings.max_tokens ?? maxTokens(),
        ...(settings.temperature == null ? {} : { temperature: settings.temperature }),
      }),
      signal,
    });
  } catch (e) {
    if (signal.aborted) return out;
    throw new Error(`The rbee node does not answer (${(e as Error).message}). Is it running?`);
  }
  if (!res.ok || !res.body) {
    const body = await res.json().catch(() => null);
    throw new Error(body?.error?.message ?? `HTTP ${res.status}`);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trimEnd();
        buf = buf.slice(nl + 1);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return out;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message ?? "the model failed");
        const choice = chunk.choices?.[0];
        if (choice?.delta?.content) {
          out.content += choice.delta.content;
          onText(out.content);
        }
        if (choice?.finish_reason) out.finish = choice.finish_reason;
        if (chunk.timings) {
          out.nodeId = chunk.timings.node_id ?? "";
          out.tokensPerSec = chunk.timings.decode_tokens_per_sec ?? null;
        }
      }
    }
  } catch (e) {
    if (signal.aborted) return out;
    throw e;
  }
  return out;
}
