import "./style.css";
import { ChatPage } from "./chat";
import { ModelsPage } from "./models";
import { SettingsPage } from "./settings";
import { SwarmPage } from "./swarm";

interface Page {
  root: HTMLElement;
  show(): Promise<void>;
  hide?(): void;
}

const pages: Record<string, Page> = { chat: new ChatPage(), swarm: new SwarmPage(), models: new ModelsPage(), settings: new SettingsPage() };
const main = document.getElementById("page")!;
let shown: Page | null = null;

async function route(): Promise<void> {
  const name = location.hash.replace(/^#\//, "") || "chat";
  const page = pages[name] ?? pages.chat;
  shown?.hide?.();
  shown = page;
  for (const a of document.querySelectorAll<HTMLAnchorElement>("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  main.replaceChildren(page.root);
  await page.show();
}

window.addEventListener("hashchange", route);
route();
