// The swarm page: every machine the registry knows, live over server-sent events.
import { type Peer, type Swarm, watchSwarm } from "./api";
import { h } from "./dom";

const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
const ago = (ms: number) => {
  const s = Math.round(ms / 1000);
  if (ms < 1500) return "now";
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
};

/** "1 machine", "3 machines". */
export const machines = (n: number) => `${n} ${n === 1 ? "machine" : "machines"}`;

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
    const head = h("p", { class: "summary" });
    if (s.enabled) {
      const up = s.peers.filter((p) => p.up).length;
      const off = s.peers.length - up;
      head.textContent = `${machines(up)} up${off ? ` · ${off} offline` : ""} · swarm key ${s.swarm_key_fingerprint}`;
    } else {
      const settings = h("a", { href: "#/settings" }, "Settings");
      head.append("This machine runs alone. To use the other machines in your office, create a swarm or join one in ", settings, ".");
    }
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th>Machine</th><th>State</th><th>Devices</th><th>Memory</th><th>Loaded</th><th>On disk</th><th>RTT</th><th>Last seen</th></tr></thead>";
    const body = document.createElement("tbody");
    body.append(...rows);
    table.append(body);
    const wrap = h("div", { class: "table-wrap" });
    wrap.append(table);
    this.root.replaceChildren(head, wrap);
  }
}

/** A peer's state in words. */
function state(p: Peer): string {
  switch (p.status) {
    case "left":
      return "offline (shut down)";
    case "down":
      return "offline (not answering)";
    case "suspect":
      return "not answering: checking";
    default:
      return p.record.share || p.local ? "up" : "up, not sharing";
  }
}
