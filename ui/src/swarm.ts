// The swarm page: every machine the registry knows, live over server-sent events.
import { type Peer, type Swarm, watchSwarm } from "./api";
import { h } from "./dom";

const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
const ago = (ms: number) => (ms < 1500 ? "now" : `${Math.round(ms / 1000)} s ago`);

export class SwarmPage {
  root = document.createElement("div");
  private stop: (() => void) | null = null;

  constructor() {
    this.root.className = "swarm";
  }

  async show(): Promise<void> {
    this.stop?.();
    this.stop = watchSwarm(
      (s) => this.render(s),
      (message) => this.root.prepend(h("p", { class: "msg error" }, message)),
    );
  }

  hide(): void {
    this.stop?.();
    this.stop = null;
  }

  private render(s: Swarm): void {
    const rows = s.peers
      .slice()
      .sort((a, b) => Number(b.local) - Number(a.local) || a.record.hostname.localeCompare(b.record.hostname))
      .map((p) => {
        const tr = document.createElement("tr");
        tr.dataset.node = p.node_id;
        if (p.local) tr.className = "local";
        if (!p.up) tr.classList.add("down");
        const loaded = p.record.models_loaded.map((m) => `${m.id} (${m.busy}/${m.slots} busy${m.decode_tps ? `, ${m.decode_tps.toFixed(0)} tok/s` : ""})`);
        const cells = [
          p.record.hostname + (p.local ? " (this machine)" : ""),
          state(p),
          p.record.devices.join(", "),
          `${gib(p.record.ram_free_bytes)} free of ${gib(p.record.ram_total_bytes)}`,
          loaded.join(", ") || "—",
          p.record.models_on_disk.map((m) => m.id).join(", ") || "—",
          p.rtt_ms === null ? "" : `${p.rtt_ms.toFixed(1)} ms`,
          p.local ? "" : ago(p.last_seen_ms),
        ];
        for (const c of cells) tr.append(h("td", {}, c));
        return tr;
      });
    const head = document.createElement("p");
    head.className = "summary";
    head.textContent = s.enabled
      ? `${s.peers.filter((p) => p.up).length} machines up · swarm key ${s.swarm_key_fingerprint}`
      : (s.message ?? "running alone");
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th>Machine</th><th>State</th><th>Devices</th><th>Memory</th><th>Loaded</th><th>On disk</th><th>RTT</th><th>Last seen</th></tr></thead>";
    const body = document.createElement("tbody");
    body.append(...rows);
    table.append(body);
    this.root.replaceChildren(head, table);
  }
}

/** A peer's state in words. */
function state(p: Peer): string {
  switch (p.status) {
    case "left":
      return "left (shut down)";
    case "down":
      return "down (not answering)";
    case "suspect":
      return "not answering: checking";
    default:
      return p.record.share || p.local ? "up" : "up, not sharing";
  }
}
