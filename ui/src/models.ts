// The models page: every model in the swarm and which machines hold it.
import { api, whereLabel } from "./api";
import { h } from "./dom";

export class ModelsPage {
  root = document.createElement("div");

  constructor() {
    this.root.className = "models";
  }

  async show(): Promise<void> {
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th>Model</th><th>Architecture</th><th>Quantization</th><th>Size</th><th>Where</th></tr></thead>";
    const body = document.createElement("tbody");
    try {
      for (const m of await api.models()) {
        const tr = h("tr", { "data-model": m.id });
        for (const c of [m.id, m.rbee.architecture, m.rbee.quantization, m.rbee.size_bytes ? `${(m.rbee.size_bytes / 2 ** 20).toFixed(0)} MiB` : "", whereLabel(m)]) {
          tr.append(h("td", {}, c));
        }
        body.append(tr);
      }
    } catch (e) {
      this.root.replaceChildren(h("p", { class: "msg error" }, (e as Error).message));
      return;
    }
    table.append(body);
    this.root.replaceChildren(table);
  }
}
