// The chat page: conversations kept by the node, answers streamed from
// whichever machine of the swarm runs the chosen model.
import { api, maxTokens, sizeLabel, streamChat, whereLabel, type ChatSettings, type Conversation, type Message, type Model } from "./api";
import { h } from "./dom";
import { renderMarkdown } from "./markdown";

export class ChatPage {
  root = h("div", { class: "chat" });
  private list = h("ul", { class: "conversations", "aria-label": "Conversations" });
  private search = h("input", { type: "search", placeholder: "Search chats", "aria-label": "Search chats" });
  private picker = h("select", { "aria-label": "Model" });
  private notice = h("p", { class: "model-notice", role: "status", hidden: "" });
  /// Conversations deleted here: an answer still streaming into one is dropped quietly.
  private gone = new Set<string>();
  private log = h("div", { class: "log", "aria-live": "polite" });
  private input = h("textarea", { rows: "3", placeholder: "Message rbee (Enter sends, Shift+Enter adds a line)", "aria-label": "Message" });
  private send = h("button", { class: "send" }, "Send");
  private current: Conversation | null = null;
  private models: Model[] = [];
  private hosts = new Map<string, string>();
  private running: AbortController | null = null;
  /// Whether the log keeps scrolling to the newest text: off once the
  /// reader scrolls up, on again at the bottom or with "Jump to latest".
  private follow = true;
  private jump = h("button", { class: "jump", type: "button", hidden: "" }, "Jump to latest ↓");
  private sideToggle = h("button", { class: "side-toggle", type: "button", "aria-expanded": "false", "aria-label": "Show chats" }, "☰ Chats");
  /// The open edit box's cancel, for Escape.
  private cancelEdit: (() => void) | null = null;
  /// The chat's own settings, in the header's panel; kept with the
  /// conversation (until it exists, here, and saved when it is created).
  private settingsToggle = h("button", { class: "settings-toggle", type: "button", "aria-expanded": "false", "aria-controls": "chat-settings" }, "Chat settings");
  private settingsPanel = h("form", { class: "chat-settings", id: "chat-settings", hidden: "" });
  private instructions = h("textarea", { rows: "3", name: "instructions", placeholder: "How answers in this chat should be, e.g. “Answer in French, in two sentences.”" });
  private temperature = h("input", { type: "number", name: "temperature", min: "0", max: "2", step: "0.1", placeholder: "model default" });
  private longest = h("input", { type: "number", name: "max-tokens", min: "1", step: "1" });
  private settingsNote = h("span", { class: "hint", role: "status" });
  private draft: ChatSettings = {};

  constructor() {
    const side = h("aside", { id: "chat-list" });
    const fresh = h("button", { class: "new" }, "New chat");
    fresh.onclick = async () => {
      await this.open(null);
      this.input.focus();
    };
    side.append(fresh, this.search, this.list);
    let timer = 0;
    this.search.oninput = () => {
      clearTimeout(timer);
      timer = window.setTimeout(() => this.refreshList(), 200);
    };
    const main = h("section", { class: "thread" });
    const bar = h("header");
    this.sideToggle.setAttribute("aria-controls", "chat-list");
    this.sideToggle.onclick = () => this.showSide(!this.root.classList.contains("side-open"));
    const exportMd = h("button", { class: "link export", type: "button", title: "Download this conversation as Markdown" }, "Export .md");
    const exportJson = h("button", { class: "link export", type: "button", title: "Download this conversation as JSON" }, "Export .json");
    exportMd.onclick = () => this.export("md");
    exportJson.onclick = () => this.export("json");
    bar.append(this.sideToggle, h("label", {}, "Model "), this.picker, this.settingsToggle, exportMd, exportJson);
    this.settingsToggle.onclick = () => {
      const open = this.settingsPanel.hidden;
      this.settingsPanel.hidden = !open;
      this.settingsToggle.setAttribute("aria-expanded", String(open));
      if (open) this.instructions.focus();
    };
    const field = (label: string, input: HTMLElement) => {
      const l = h("label", {}, label);
      l.append(input);
      return l;
    };
    this.settingsPanel.append(
      field("Instructions (system prompt)", this.instructions),
      field("Temperature (0–2) ", this.temperature),
      field("Longest answer, in tokens ", this.longest),
      this.settingsNote,
    );
    this.settingsPanel.onsubmit = (e) => e.preventDefault();
    const number = (v: string) => (v.trim() === "" ? null : Number(v));
    this.instructions.onchange = () => this.saveSettings({ instructions: this.instructions.value.trim() || null });
    this.temperature.onchange = () => this.saveSettings({ temperature: number(this.temperature.value) });
    this.longest.onchange = () => this.saveSettings({ max_tokens: number(this.longest.value) });
    this.log.onscroll = () => {
      this.follow = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 40;
      this.jump.hidden = this.follow;
    };
    this.jump.onclick = () => {
      this.follow = true;
      this.scroll();
      this.input.focus();
    };
    // Escape stops an answer, or cancels an edit, wherever focus is on this page.
    document.addEventListener("keydown", (e) => {
      if (e.key !== "Escape" || !this.root.isConnected) return;
      if (this.cancelEdit) {
        e.preventDefault();
        this.cancelEdit();
      } else if (this.running) {
        e.preventDefault();
        this.running.abort();
      } else if (this.root.classList.contains("side-open")) {
        this.showSide(false);
      }
    });
    this.picker.onchange = () => {
      this.renderPicker(this.picker.value);
      if (this.current) {
        this.current.model = this.picker.value;
        api.updateConversation(this.current.id, { model: this.picker.value }).catch((e) => this.error(e));
      }
    };
    const composer = h("form", { class: "composer" });
    composer.append(this.input, this.send);
    composer.onsubmit = (e) => {
      e.preventDefault();
      if (this.running) this.running.abort();
      else this.submit();
    };
    this.input.onkeydown = (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        if (!this.running) this.submit();
      }
    };
    main.append(bar, this.notice, this.settingsPanel, this.log, this.jump, composer);
    this.root.append(side, main);
  }

  /// Saves a change of the chat's settings with the conversation (or keeps
  /// it until the conversation is created by the first message).
  private async saveSettings(change: ChatSettings): Promise<void> {
    if (!this.current) {
      this.draft = { ...this.draft, ...change };
      this.settingsNote.textContent = "Kept for this chat's first message.";
      return;
    }
    try {
      const saved = await api.updateConversation(this.current.id, change);
      Object.assign(this.current, { instructions: saved.instructions, temperature: saved.temperature, max_tokens: saved.max_tokens });
      this.settingsNote.textContent = "Saved with this chat.";
    } catch (e) {
      this.settingsNote.textContent = (e as Error).message;
    }
    this.showSettings();
  }

  /// Fills the settings panel from the open chat (or the draft of a new one).
  private showSettings(): void {
    const s: ChatSettings = this.current ?? this.draft;
    this.instructions.value = s.instructions ?? "";
    this.temperature.value = s.temperature == null ? "" : String(s.temperature);
    this.longest.value = s.max_tokens == null ? "" : String(s.max_tokens);
    const fallback = maxTokens();
    this.longest.placeholder = fallback ? `${fallback} (this browser's default)` : "until the model stops";
    const set = [s.instructions, s.temperature, s.max_tokens].filter((v) => v != null).length;
    this.settingsToggle.textContent = set ? `Chat settings (${set})` : "Chat settings";
  }

  /// The chat list, on narrow windows a panel over the thread.
  private showSide(open: boolean): void {
    this.root.classList.toggle("side-open", open);
    this.sideToggle.setAttribute("aria-expanded", String(open));
    if (open) (this.list.querySelector<HTMLElement>("li.active .title") ?? this.list.querySelector<HTMLElement>(".title") ?? this.search).focus();
  }

  async show(): Promise<void> {
    await Promise.all([this.refreshList(), this.refreshModels()]);
    if (!this.current) {
      const first = (await api.conversations())[0];
      await this.open(first?.id ?? null);
    }
    this.input.focus();
  }

  private async refreshModels(): Promise<void> {
    try {
      const [models, swarm] = await Promise.all([api.models(), api.swarm()]);
      this.models = models;
      this.hosts = new Map(swarm.peers.map((p) => [p.node_id, p.local ? "this machine" : p.record.hostname]));
    } catch (e) {
      this.error(e);
    }
    this.renderPicker(this.current?.model || this.picker.value);
  }

  /// The picker, with `want` chosen: a chat keeps its model even when no
  /// machine has it now (offline, or removed), and says so, rather than
  /// quietly answering with another one.
  private renderPicker(want: string): void {
    this.picker.replaceChildren(
      ...this.models.map((m) => h("option", { value: m.id }, `${m.id} · ${m.rbee.quantization} · ${sizeLabel(m.rbee.size_bytes)} — ${whereLabel(m) || "nowhere"}`)),
    );
    const missing = Boolean(want) && !this.models.some((m) => m.id === want);
    if (missing) this.picker.prepend(h("option", { value: want }, `${want} — not available now`));
    if (want) this.picker.value = want;
    if (this.models.length === 0 && !missing) this.picker.append(h("option", { value: "" }, "No models: add one on the Models page"));
    this.notice.hidden = !missing;
    this.notice.textContent = missing ? this.offlineMessage(want) : "";
  }

  private offlineMessage(model: string): string {
    return `This chat uses ${model}, which no machine in the swarm has right now (its machine is offline, or the model was removed). Start that machine again, or choose another model to go on.`;
  }

  /// What the answer's place says until its first words: where the model
  /// runs, and whether it must load first.
  private waitingText(model: string): string {
    const m = this.models.find((x) => x.id === model);
    const nodes = m?.rbee.nodes ?? [];
    const where = (n: { local: boolean; hostname: string }) => (n.local ? "this machine" : n.hostname);
    const loaded = nodes.find((n) => n.loaded);
    if (loaded) return `Waiting for ${model} on ${where(loaded)}…`;
    const first = nodes.find((n) => n.local) ?? nodes[0];
    return first ? `Loading ${model} on ${where(first)}: the first answer takes a few seconds…` : "…";
  }

  /// Why the chosen model cannot answer now, if it cannot.
  private modelProblem(): string | null {
    const model = this.picker.value;
    if (!model) return "There is no model to answer with: pull or import one on the Models page.";
    if (!this.models.some((m) => m.id === model)) return this.offlineMessage(model);
    return null;
  }

  private async refreshList(): Promise<void> {
    let items: Conversation[] = [];
    try {
      items = await api.conversations(this.search.value);
    } catch (e) {
      this.error(e);
    }
    this.list.replaceChildren(
      ...items.map((c) => {
        const li = h("li", { "data-id": c.id });
        if (c.id === this.current?.id) li.classList.add("active");
        const title = h("button", { class: "title", type: "button" }, c.title || "New chat");
        title.onclick = async () => {
          await this.open(c.id);
          this.showSide(false);
          this.input.focus();
        };
        const rename = h("button", { class: "icon", title: "Rename", "aria-label": "Rename" }, "✎");
        rename.onclick = async () => {
          const t = prompt("Rename this chat", c.title);
          if (t === null) return;
          await api.updateConversation(c.id, { title: t }).catch((e) => this.error(e));
          if (this.current?.id === c.id) this.current.title = t;
          this.refreshList();
        };
        const del = h("button", { class: "icon", title: "Delete", "aria-label": "Delete" }, "×");
        del.onclick = async () => {
          if (!confirm(`Delete “${c.title || "New chat"}”?`)) return;
          this.gone.add(c.id);
          if (this.current?.id === c.id) this.running?.abort();
          await api.deleteConversation(c.id).catch((e) => this.error(e));
          if (this.current?.id === c.id) await this.open(null);
          this.refreshList();
        };
        li.append(title, rename, del);
        return li;
      }),
    );
  }

  private async open(id: string | null): Promise<void> {
    this.running?.abort();
    let failed: unknown = null;
    this.current = id ? await api.conversation(id).catch((e) => ((failed = e), null)) : null;
    this.renderPicker(this.current?.model || (this.models.some((m) => m.id === this.picker.value) ? this.picker.value : (this.models[0]?.id ?? "")));
    this.log.replaceChildren();
    if (failed) this.error(failed);
    for (const m of this.current?.messages ?? []) this.log.append(this.bubble(m));
    this.offerRetry();
    if (!this.current?.messages?.length) this.log.append(h("p", { class: "empty" }, "Ask anything. The answer runs on the best machine in your office that has the model."));
    for (const li of this.list.querySelectorAll("li")) li.classList.toggle("active", li.getAttribute("data-id") === id);
    this.cancelEdit = null;
    this.follow = true;
    this.draft = {};
    this.settingsNote.textContent = "";
    this.showSettings();
    this.scroll();
  }

  private bubble(m: Message): HTMLElement {
    const div = h("div", { class: `msg ${m.role}`, "data-id": String(m.id) });
    const body = h("div", { class: "body" });
    if (m.role === "assistant") renderMarkdown(body, m.content);
    else body.textContent = m.content;
    div.append(body);
    const foot = h("div", { class: "meta" });
    if (m.role === "assistant") {
      foot.textContent = this.meta(m.model ?? null, m.tokens_per_sec ?? null, m.node_id ?? "", m.note ?? null);
      const copy = h("button", { class: "link copy-answer" }, "Copy");
      copy.onclick = async () => {
        try {
          await navigator.clipboard.writeText(m.content);
          copy.textContent = "Copied";
          setTimeout(() => (copy.textContent = "Copy"), 1500);
        } catch (e) {
          this.error(e);
        }
      };
      const again = h("button", { class: "link regenerate" }, "Regenerate");
      again.onclick = () => this.regenerate(m);
      foot.append(copy, again);
    } else if (m.role === "user") {
      const edit = h("button", { class: "link edit" }, "Edit");
      edit.onclick = () => this.edit(m, div);
      foot.append(edit);
    }
    div.append(foot);
    return div;
  }

  private meta(model: string | null, tps: number | null, nodeId: string, note: string | null): string {
    const parts: string[] = [];
    if (model) parts.push(model);
    if (tps) parts.push(`${tps.toFixed(1)} tok/s`);
    parts.push(`answered by ${this.hosts.get(nodeId) ?? (nodeId ? nodeId.slice(0, 12) : "this machine")}`);
    if (note) parts.push(note);
    return parts.join(" · ") + " ";
  }

  private async submit(): Promise<void> {
    const text = this.input.value.trim();
    if (!text) return;
    const model = this.picker.value;
    const problem = this.modelProblem();
    if (problem) return this.error(new Error(problem));
    this.input.value = "";
    try {
      if (!this.current) {
        let created = await api.createConversation(text.slice(0, 60), model);
        if (Object.keys(this.draft).length) created = await api.updateConversation(created.id, this.draft);
        this.draft = {};
        this.current = { ...created, messages: [] };
        this.log.replaceChildren();
        this.refreshList();
      }
      const m = await api.addMessage(this.current.id, { role: "user", content: text });
      this.current.messages!.push(m);
      this.log.querySelector(".empty")?.remove();
      this.log.append(this.bubble(m));
      await this.answer();
    } catch (e) {
      this.error(e);
    }
  }

  /// Streams an answer to the conversation as it stands and keeps it.
  private async answer(): Promise<void> {
    const conv = this.current!;
    const model = this.picker.value;
    const div = h("div", { class: "msg assistant streaming" });
    const body = h("div", { class: "body waiting" }, this.waitingText(model));
    const foot = h("div", { class: "meta" });
    div.append(body, foot);
    this.log.append(div);
    this.follow = true;
    this.scroll();
    this.running = new AbortController();
    this.send.textContent = "Stop";
    this.send.classList.add("stop");
    let pending = false;
    let latest = "";
    try {
      const history = conv.messages!.map((m) => ({ role: m.role, content: m.content }));
      if (conv.instructions) history.unshift({ role: "system", content: conv.instructions });
      const r = await streamChat(
        model,
        history,
        (text) => {
          latest = text;
          if (pending) return;
          pending = true;
          requestAnimationFrame(() => {
            pending = false;
            body.classList.remove("waiting");
            renderMarkdown(body, latest);
            this.scroll();
          });
        },
        this.running.signal,
        { temperature: conv.temperature, max_tokens: conv.max_tokens },
      );
      const stopped = this.running.signal.aborted;
      const note = stopped ? "stopped" : r.finish === "length" ? "cut at the length limit" : null;
      if (this.gone.has(conv.id)) {
        div.remove();
        return;
      }
      const saved = await api.addMessage(conv.id, { role: "assistant", content: r.content, model, node_id: r.nodeId, tokens_per_sec: r.tokensPerSec, note });
      conv.messages!.push(saved);
      div.replaceWith(this.bubble(saved));
    } catch (e) {
      div.remove();
      if (!this.gone.has(conv.id)) this.error(e, () => this.retry());
    } finally {
      this.running = null;
      this.send.textContent = "Send";
      this.send.classList.remove("stop");
      this.scroll();
      if (conv === this.current) this.input.focus();
    }
  }

  private async regenerate(m: Message): Promise<void> {
    if (this.running || !this.current) return;
    const problem = this.modelProblem();
    if (problem) return this.error(new Error(problem));
    await this.trimFrom(m);
    await this.answer();
  }

  private edit(m: Message, div: HTMLElement): void {
    if (this.running) return;
    const box = h("textarea", { rows: "3", "aria-label": "Edit message" });
    box.value = m.content;
    const go = h("button", {}, "Send");
    const cancel = h("button", { class: "link" }, "Cancel");
    const form = h("div", { class: "editing" });
    form.append(box, go, cancel);
    div.replaceChildren(form);
    box.focus();
    this.cancelEdit = () => {
      this.cancelEdit = null;
      const again = this.bubble(m);
      div.replaceWith(again);
      again.querySelector<HTMLButtonElement>("button.edit")?.focus();
    };
    cancel.onclick = () => this.cancelEdit?.();
    // As in the message box: Enter sends, Shift+Enter adds a line.
    box.onkeydown = (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        go.click();
      }
    };
    go.onclick = async () => {
      const text = box.value.trim();
      if (!text || !this.current) return;
      this.cancelEdit = null;
      try {
        await this.trimFrom(m);
        const added = await api.addMessage(this.current.id, { role: "user", content: text });
        this.current.messages!.push(added);
        this.log.append(this.bubble(added));
        await this.answer();
      } catch (e) {
        this.error(e);
      }
    };
  }

  /// Removes `m` and everything after it, here and on the node.
  private async trimFrom(m: Message): Promise<void> {
    const conv = this.current!;
    await api.trimFrom(conv.id, m.id);
    conv.messages = conv.messages!.filter((x) => x.id < m.id);
    let el = this.log.querySelector(`[data-id="${m.id}"]`);
    while (el) {
      const next: Element | null = el.nextElementSibling;
      el.remove();
      el = next;
    }
  }

  private error(e: unknown, retry?: () => void): void {
    const div = h("div", { class: "msg error", role: "alert" }, (e as Error).message ?? String(e));
    if (retry) div.append(" ", this.retryButton(div, retry));
    this.log.append(div);
    this.scroll();
  }

  private retryButton(holder: HTMLElement, retry: () => void): HTMLButtonElement {
    const b = h("button", { class: "link retry", type: "button" }, "Retry");
    b.onclick = () => {
      if (this.running) return;
      holder.remove();
      retry();
    };
    return b;
  }

  /// A question with no answer after it (the page was closed or reloaded
  /// while it was answered, or the answer failed): Retry asks again.
  private offerRetry(): void {
    const last = this.current?.messages?.at(-1);
    if (!last || last.role !== "user" || this.running) return;
    const div = h("div", { class: "msg unanswered" }, "No answer was kept for this question. ");
    div.append(this.retryButton(div, () => this.retry()));
    this.log.append(div);
  }

  private async retry(): Promise<void> {
    const problem = this.modelProblem();
    if (problem) return this.error(new Error(problem), () => this.retry());
    await this.answer();
  }

  /// Downloads the open conversation: Markdown to read or paste, JSON with
  /// everything the node keeps (model, machine and speed of each answer).
  private export(kind: "md" | "json"): void {
    const c = this.current;
    if (!c?.messages?.length) return this.error(new Error("Nothing to export yet: this chat has no messages."));
    const text =
      kind === "json"
        ? JSON.stringify(c, null, 2)
        : [`# ${c.title || "Chat"}`, ...c.messages.map((m) => `## ${m.role === "user" ? "You" : m.role === "assistant" ? `rbee${m.model ? ` (${m.model})` : ""}` : "Instructions"}\n\n${m.content}`)].join("\n\n") + "\n";
    const a = h("a", {
      href: URL.createObjectURL(new Blob([text], { type: kind === "json" ? "application/json" : "text/markdown" })),
      download: `${(c.title || "chat").replace(/[^\p{L}\p{N} _-]+/gu, "").trim().slice(0, 60) || "chat"}.${kind}`,
    });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  /// Keeps the newest text in view, unless the reader scrolled up.
  private scroll(): void {
    if (this.follow) this.log.scrollTop = this.log.scrollHeight;
  }
}
