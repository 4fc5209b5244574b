// The models page: pull from Hugging Face with progress and cancel, import a
// file from this computer, delete; every model in the swarm and which
// machines hold it.
import { api, type HubFile, importModel, type Model, type Offer, type Pull, sizeLabel as gb, whereLabel } from "./api";
import { h } from "./dom";

const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;

export class ModelsPage {
  root = document.createElement("div");
  private table = h("div", { class: "model-list table-wrap" });
  private offers = h("div", { class: "recommended" });
  private pullList = h("ul", { class: "pulls" });
  private message = h("div", { class: "page-message" });
  private found = h("div", { class: "hub-results" });
  private timer = 0;
  private watching = false;
  /// Finished pulls whose model the list already shows.
  private seenDone = new Set<number>();

  constructor() {
    this.root.className = "models";
    const repo = h("input", { name: "repo", placeholder: "Repository, e.g. unsloth/gemma-3-270m-it-GGUF", required: "", size: "36" });
    const file = h("input", { name: "file", placeholder: "File, e.g. gemma-3-270m-it-Q4_K_M.gguf", required: "", size: "32" });
    const pullForm = h("form", { class: "pull" });
    pullForm.append(h("h3", {}, "Pull from Hugging Face"), repo, file, h("button", { type: "submit" }, "Pull"));
    pullForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        await api.pull(repo.value.trim(), file.value.trim());
        this.say("");
        this.watchPulls();
      } catch (err) {
        this.say((err as Error).message, true);
      }
    });
    const picker = h("input", { type: "file", accept: ".gguf", name: "import" });
    const importBar = h("progress", { max: "1", value: "0", hidden: "" });
    picker.addEventListener("change", async () => {
      const f = picker.files?.[0];
      if (!f) return;
      importBar.hidden = false;
      this.say(`Importing ${f.name}…`);
      try {
        const m = await importModel(f, (x) => (importBar.value = x));
        this.say(`Imported ${m.id}.`);
        await this.refresh();
      } catch (err) {
        this.say((err as Error).message, true);
      } finally {
        importBar.hidden = true;
        picker.value = "";
      }
    });
    // Search the hub: repositories, then a repository's files with their
    // size, quantization and where they fit, each one click to pull.
    const query = h("input", { type: "search", name: "hub-search", placeholder: "Search Hugging Face, e.g. qwen coder", "aria-label": "Search Hugging Face" });
    const searchForm = h("form", { class: "pull hub-search" });
    searchForm.append(h("h3", {}, "Find a model"), query, h("button", { type: "submit" }, "Search"));
    searchForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      this.found.replaceChildren(h("p", { class: "hint" }, "Searching…"));
      try {
        const repos = await api.hubSearch(query.value.trim());
        if (repos.length === 0) {
          this.found.replaceChildren(h("p", { class: "hint" }, `No GGUF models match “${query.value.trim()}”.`));
          return;
        }
        const list = h("ul", { class: "hub-repos" });
        for (const r of repos) {
          const li = h("li");
          const open = h("button", { type: "button", class: "link hub-repo" }, r.repo);
          open.addEventListener("click", () => this.showFiles(r.repo, li));
          li.append(open, h("span", { class: "hint" }, ` ${r.downloads.toLocaleString("en")} downloads`));
          list.append(li);
        }
        this.found.replaceChildren(list);
      } catch (err) {
        this.found.replaceChildren(h("p", { class: "msg error" }, (err as Error).message));
      }
    });
    const importForm = h("div", { class: "import" });
    importForm.append(h("h3", {}, "Import a GGUF file from this computer"), picker, importBar);
    this.root.append(
      this.message,
      h("h3", {}, "Recommended models"),
      this.offers,
      searchForm,
      this.found,
      pullForm,
      this.pullList,
      importForm,
      h("h3", {}, "Models in the swarm"),
      this.table,
    );
  }

  async show(): Promise<void> {
    await Promise.all([this.refresh(), this.refreshOffers()]);
    this.watchPulls();
  }

  /// The recommended list: what each is for, its size, whether it fits
  /// this machine, and Pull (or where it is, once here).
  private async refreshOffers(): Promise<void> {
    let list: { memory_bytes: number; data: Offer[] };
    try {
      list = await api.recommended();
    } catch (e) {
      this.offers.replaceChildren(h("p", { class: "msg error" }, (e as Error).message));
      return;
    }
    const rows = list.data.map((o) => {
      const row = h("div", { class: "offer", "data-offer": o.file });
      const fit = o.fits
        ? h("span", { class: "fits" }, `fits this machine (needs about ${gb(o.needs_bytes)})`)
        : h("span", { class: "too-big" }, `needs about ${gb(o.needs_bytes)}; this machine has ${gb(list.memory_bytes)}`);
      const text = h("div", { class: "offer-text" });
      text.append(h("strong", {}, o.name), h("span", { class: "offer-kind" }, ` · ${o.kind} · ${gb(o.size_bytes)}`), h("div", {}, o.about), fit);
      row.append(text);
      if (o.installed) {
        row.append(h("span", { class: "installed" }, "on this machine"));
      } else {
        const pull = h("button", { type: "button" }, "Pull");
        pull.setAttribute("aria-label", `Pull ${o.name}`);
        pull.addEventListener("click", async () => {
          try {
            await api.pull(o.repo, o.file);
            this.say(`Pulling ${o.name} from ${o.repo}.`);
            this.watchPulls();
          } catch (err) {
            this.say((err as Error).message, true);
          }
        });
        row.append(pull);
      }
      return row;
    });
    this.offers.replaceChildren(...rows);
  }

  /// A repository's GGUF files under its entry in the search results.
  private async showFiles(repo: string, under: HTMLElement): Promise<void> {
    under.querySelector(".hub-files")?.remove();
    const box = h("div", { class: "hub-files table-wrap" });
    under.append(box);
    let files: HubFile[];
    let memory: number;
    try {
      ({ data: files, memory_bytes: memory } = await api.hubFiles(repo));
    } catch (err) {
      box.replaceChildren(h("p", { class: "msg error" }, (err as Error).message));
      return;
    }
    if (files.length === 0) {
      box.replaceChildren(h("p", { class: "hint" }, "This repository has no GGUF file."));
      return;
    }
    const table = h("table");
    table.innerHTML = "<thead><tr><th>File</th><th>Quantization</th><th>Size</th><th>Fits</th><th></th></tr></thead>";
    const body = h("tbody");
    for (const f of files) {
      const tr = h("tr", { "data-file": f.file });
      const where = f.fits
        ? h("span", { class: "fits" }, `fits this machine${f.fits_on.length ? `, and ${f.fits_on.join(", ")}` : ""}`)
        : f.fits_on.length
          ? h("span", { class: "fits" }, `fits ${f.fits_on.join(", ")} (not this machine: it needs about ${gb(f.needs_bytes)})`)
          : h("span", { class: "too-big" }, `needs about ${gb(f.needs_bytes)}; this machine has ${gb(memory)}`);
      const pull = h("button", { type: "button" }, "Pull");
      pull.setAttribute("aria-label", `Pull ${f.file}`);
      pull.addEventListener("click", async () => {
        try {
          await api.pull(repo, f.file);
          this.say(`Pulling ${f.file} from ${repo}.`);
          this.watchPulls();
        } catch (err) {
          this.say((err as Error).message, true);
        }
      });
      const cells = [h("td", {}, f.file), h("td", {}, f.quantization || "—"), h("td", {}, gb(f.size_bytes)), h("td"), h("td")];
      cells[3].append(where);
      cells[4].append(pull);
      tr.append(...cells);
      body.append(tr);
    }
    table.append(body);
    box.replaceChildren(table);
  }

  hide(): void {
    clearTimeout(this.timer);
    this.watching = false;
  }

  private say(text: string, error = false): void {
    this.message.textContent = text;
    this.message.className = `page-message${error ? " msg error" : ""}`;
  }

  /// Refreshes the pulls every 300 ms while any runs.
  private watchPulls(): void {
    if (this.watching) return;
    this.watching = true;
    const tick = async () => {
      let pulls: Pull[] = [];
      try {
        pulls = await api.pulls();
      } catch (err) {
        this.say((err as Error).message, true);
      }
      this.renderPulls(pulls);
      const finished = pulls.filter((p) => p.state === "done" && !this.seenDone.has(p.id));
      for (const p of finished) this.seenDone.add(p.id);
      if (finished.length > 0) await Promise.all([this.refresh(), this.refreshOffers()]);
      const running = pulls.some((p) => p.state === "running");
      if (running && this.watching) this.timer = window.setTimeout(tick, 300);
      else this.watching = false;
    };
    tick();
  }

  private renderPulls(pulls: Pull[]): void {
    this.pullList.replaceChildren(
      ...pulls.map((p) => {
        const li = h("li", { "data-pull": String(p.id), "data-state": p.state });
        const name = h("span", { class: "name" }, `${p.repo} / ${p.file}`);
        const bar = h("progress", { max: String(p.total_bytes ?? 1), value: String(p.total_bytes ? p.done_bytes : 0) });
        const lan = p.from_peers.length > 0 ? `from ${p.from_peers.join(" and ")}, LAN` : "";
        const speed = p.bytes_per_s ? `, ${Math.round(p.bytes_per_s / 1e6)} MB/s` : "";
        const what =
          p.state === "running"
            ? p.total_bytes
              ? `${mib(p.done_bytes)} of ${mib(p.total_bytes)}${lan ? ` ${lan}` : ""}`
              : "starting…"
            : p.state === "done"
              ? `done: ${p.model}${lan ? ` (${lan}${speed})` : ""}`
              : p.state === "failed"
                ? `failed: ${p.error}`
                : "cancelled";
        const status = h("span", { class: `pull-status${p.state === "failed" ? " error" : ""}` }, what);
        const button = h("button", { type: "button", class: "link" }, p.state === "running" ? "Cancel" : "Dismiss");
        button.addEventListener("click", async () => {
          try {
            await api.cancelPull(p.id);
          } catch (err) {
            this.say((err as Error).message, true);
          }
          this.watching = false;
          this.watchPulls();
        });
        li.append(name, bar, status, button);
        if (p.note) li.append(h("p", { class: "pull-note" }, p.note));
        return li;
      }),
    );
  }

  async refresh(): Promise<void> {
    let models: Model[];
    try {
      models = await api.models();
    } catch (e) {
      this.table.replaceChildren(h("p", { class: "msg error" }, (e as Error).message));
      return;
    }
    if (models.length === 0) {
      this.table.replaceChildren(h("p", { class: "empty" }, "No models yet: pull one or import a GGUF file."));
      return;
    }
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th>Model</th><th>Architecture</th><th>Quantization</th><th>Size</th><th>Where</th><th></th></tr></thead>";
    const body = document.createElement("tbody");
    for (const m of models) {
      const tr = h("tr", { "data-model": m.id });
      const name = h("td", {}, m.id);
      if (m.rbee.source) name.append(h("small", { class: "source" }, m.rbee.source));
      tr.append(name);
      for (const c of [m.rbee.architecture, m.rbee.quantization, m.rbee.size_bytes ? mib(m.rbee.size_bytes) : "", whereLabel(m)]) {
        tr.append(h("td", {}, c));
      }
      const actions = h("td");
      if (m.rbee.nodes.some((n) => n.local)) {
        const del = h("button", { type: "button", class: "link delete" }, "Delete");
        del.addEventListener("click", async () => {
          if (!confirm(`Delete ${m.id} from this machine?`)) return;
          try {
            await api.deleteModel(m.id);
            this.say(`Deleted ${m.id}.`);
          } catch (err) {
            this.say((err as Error).message, true);
          }
          await this.refresh();
        });
        actions.append(del);
      }
      tr.append(actions);
      body.append(tr);
    }
    table.append(body);
    this.table.replaceChildren(table);
  }
}
