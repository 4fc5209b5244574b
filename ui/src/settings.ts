// The settings page: sharing, the swarm (create one, join by pasting a join
// code, leave), the API's address and keys, and the chat's answer length.
// The node writes them to its config file; some apply at the next start.
import { api, type Settings } from "./api";
import { h } from "./dom";

const section = (title: string, ...children: HTMLElement[]) => {
  const s = h("section", { class: "setting" });
  s.append(h("h3", {}, title), ...children);
  return s;
};

/// A new API key: 24 random bytes, URL-safe.
function newKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return `rbee-${btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "")}`;
}

export class SettingsPage {
  root = document.createElement("div");
  private message = h("div", { class: "page-message" });
  private body = h("div");

  constructor() {
    this.root.className = "settings";
    this.root.append(this.message, this.body);
  }

  async show(): Promise<void> {
    this.say("");
    try {
      this.render(await api.settings());
    } catch (e) {
      this.say((e as Error).message, true);
    }
  }

  private say(text: string, error = false): void {
    this.message.textContent = text;
    this.message.className = `page-message${error ? " msg error" : ""}`;
  }

  /// Runs a change and shows the settings it returns (or why it failed).
  private async apply(change: () => Promise<Settings>, done: string): Promise<void> {
    try {
      this.render(await change());
      this.say(done);
    } catch (e) {
      this.say((e as Error).message, true);
    }
  }

  private render(s: Settings): void {
    const parts: HTMLElement[] = [];
    if (s.restart_required.length > 0) {
      const banner = h("div", { class: "restart" }, `Saved; takes effect when rbee restarts (${s.restart_required.join(", ")}). `);
      if (s.can_restart) {
        const b = h("button", { type: "button" }, "Restart now");
        b.addEventListener("click", async () => {
          try {
            await api.restart();
            this.say("Restarting…");
          } catch (e) {
            this.say((e as Error).message, true);
          }
        });
        banner.append(b);
      } else {
        banner.append("Restart `rbee serve` to apply.");
      }
      parts.push(banner);
    }
    if (s.overridden.length > 0) {
      parts.push(
        h(
          "div",
          { class: "restart" },
          `Saved, but this node was started with a command-line flag or RBEE_* variable that sets ${s.overridden.join(", ")}: start it without that to use the saved value.`,
        ),
      );
    }

    // Sharing applies at once.
    const share = h("input", { type: "checkbox", name: "share" });
    share.checked = s.share;
    share.addEventListener("change", () => this.apply(() => api.updateSettings({ share: share.checked }), share.checked ? "This machine runs requests for the swarm." : "Sharing paused: this machine only runs its own requests."));
    const shareLabel = h("label");
    shareLabel.append(share, " Share this machine: run other machines' requests on it");
    parts.push(section("Sharing", shareLabel));

    // The swarm.
    const swarmInfo = h(
      "p",
      { class: "swarm-state" },
      (s.swarm.enabled ? `In swarm ${s.swarm.fingerprint}.` : "Running alone: this machine is in no swarm.") +
        (s.saved.swarm_fingerprint !== s.swarm.fingerprint
          ? s.saved.swarm_fingerprint
            ? ` Joins swarm ${s.saved.swarm_fingerprint} when rbee restarts.`
            : " Leaves the swarm when rbee restarts."
          : ""),
    );
    const swarmParts: HTMLElement[] = [swarmInfo];
    const code = s.saved.swarm_join_code ?? s.swarm.join_code;
    if (code) {
      const shown = h("input", { readonly: "", name: "join-code", size: "60" });
      shown.value = code;
      const copy = h("button", { type: "button" }, "Copy");
      copy.addEventListener("click", () => navigator.clipboard?.writeText(code).then(() => this.say("Join code copied.")));
      const row = h("div", { class: "row" });
      row.append(shown, copy);
      swarmParts.push(h("p", {}, "Join code — paste it into Settings on the other machines (keep it private: it is the swarm's password):"), row);
    }
    // Replacing a swarm cuts this machine off from the others until each
    // gets the new code: a quiet link that asks first, not the main button.
    const replacing = Boolean(s.swarm.enabled || code);
    const create = h("button", { type: "button", name: "create-swarm", class: replacing ? "link" : "" }, replacing ? "Create a new swarm instead" : "Create a swarm");
    create.addEventListener("click", () => {
      if (replacing && !confirm("Create a new swarm? This machine leaves its current swarm (after a restart), and every other machine must be given the new join code.")) return;
      this.apply(() => api.newSwarm(), "New swarm created; give its join code to the other machines.");
    });
    const join = h("input", { name: "join", placeholder: "Paste a join code", size: "60" });
    const joinButton = h("button", { type: "button", name: "join-swarm" }, "Join");
    joinButton.addEventListener("click", () => this.apply(() => api.updateSettings({ swarm_key: join.value.trim() }), "Join code saved."));
    const joinRow = h("div", { class: "row" });
    joinRow.append(join, joinButton);
    swarmParts.push(create, joinRow);
    if (code) {
      const leave = h("button", { type: "button", class: "link" }, "Leave the swarm");
      leave.addEventListener("click", () => this.apply(() => api.updateSettings({ swarm_key: null }), "This machine will run alone."));
      swarmParts.push(leave);
    }
    parts.push(section("Swarm", ...swarmParts));

    // The API: address and keys.
    const listen = h("input", { name: "listen", size: "24" });
    const shownListen = s.saved.listen ?? s.listen;
    listen.value = shownListen;
    const keys = [...(s.saved.api_keys ?? s.api_keys)];
    const keyList = h("ul", { class: "keys" });
    const drawKeys = () =>
      keyList.replaceChildren(
        ...keys.map((k, i) => {
          const li = h("li");
          const remove = h("button", { type: "button", class: "link" }, "Remove");
          remove.addEventListener("click", () => {
            keys.splice(i, 1);
            drawKeys();
          });
          li.append(h("code", {}, k), remove);
          return li;
        }),
      );
    drawKeys();
    const add = h("button", { type: "button", name: "add-key" }, "Add a key");
    add.addEventListener("click", () => {
      keys.push(newKey());
      drawKeys();
    });
    const save = h("button", { type: "button", name: "save-api" }, "Save");
    save.addEventListener("click", () => {
      // The address goes into the config file only when it was changed here.
      const change = listen.value.trim() === shownListen ? { api_keys: keys } : { listen: listen.value.trim(), api_keys: keys };
      this.apply(() => api.updateSettings(change), "API settings saved.");
    });
    const listenRow = h("label");
    listenRow.append("Address and port ", listen);
    parts.push(
      section(
        "API",
        h("p", { class: "hint" }, "Tools use http://ADDRESS/v1. 127.0.0.1 keeps the API on this machine; 0.0.0.0 opens it to the LAN, which needs at least one API key."),
        listenRow,
        h("p", {}, "API keys (other machines send one as “Authorization: Bearer KEY”):"),
        keyList,
        add,
        save,
      ),
    );

    // The chat's answer length (kept by this browser).
    const max = h("input", { type: "number", min: "1", name: "max-tokens", placeholder: "until the model stops" });
    max.value = localStorage.getItem("rbee.maxTokens") ?? "";
    max.addEventListener("change", () => {
      if (max.value) localStorage.setItem("rbee.maxTokens", max.value);
      else localStorage.removeItem("rbee.maxTokens");
      this.say("Saved in this browser.");
    });
    const maxLabel = h("label");
    maxLabel.append("Longest answer, in tokens ", max);
    parts.push(section("Chat", maxLabel));

    if (s.config_file) parts.push(h("p", { class: "hint" }, `Saved in ${s.config_file}. RBEE_* variables and command-line flags override it.`));
    this.body.replaceChildren(...parts);
  }
}
