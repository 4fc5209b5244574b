// The UI in Debian's Chromium against real `rbee serve` nodes on the
// fixture model. Screenshots go to $RBEE_SCREENSHOTS (default: screenshots/).
// Usage: node --test test.mjs   (RBEE_BIN, RBEE_FIXTURE set by run.sh)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, mkdtempSync, mkdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BIN = process.env.RBEE_BIN;
const FIXTURE = process.env.RBEE_FIXTURE;
const SHOTS = process.env.RBEE_SCREENSHOTS ?? new URL("screenshots/", import.meta.url).pathname;
const CHROMIUM = process.env.RBEE_CHROMIUM ?? "/usr/bin/chromium";
mkdirSync(SHOTS, { recursive: true });

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

const nodes = [];
const hubs = [];

/// Starts `rbee serve` on `dir` and resolves once it listens.
async function startNode(dir, extra = [], moreEnv = {}) {
  const env = { ...process.env, RBEE_CONFIG: join(dir, "none.toml"), ...moreEnv };
  const child = spawn(BIN, ["--data-dir", dir, "serve", "--listen", "127.0.0.1:0", ...extra], { env, stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  child.stderr.on("data", (d) => (log += d));
  const url = await new Promise((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/rbee listening on (\S+)/);
      if (m) resolve(m[1].replace(/\/v1$/, ""));
    });
    child.on("exit", (code) => reject(new Error(`rbee serve exited ${code}: ${log}`)));
  });
  const node = { child, url, dir, log: () => log };
  nodes.push(node);
  return node;
}

async function stopNode(node) {
  const exited = new Promise((r) => node.child.once("exit", (code) => r(code)));
  node.child.kill("SIGTERM");
  assert.equal(await exited, 0, "rbee serve exits 0 on SIGTERM");
  nodes.splice(nodes.indexOf(node), 1);
}

function dataDirWithFixture() {
  const dir = mkdtempSync(join(tmpdir(), "rbee-browser-"));
  const r = spawnSync(BIN, ["--data-dir", dir, "models", "import", FIXTURE], { env: { ...process.env, RBEE_CONFIG: join(dir, "none.toml") } });
  assert.equal(r.status, 0, String(r.stderr));
  return dir;
}

/// A stand-in for the Hugging Face hub on loopback: serves the fixture at
/// /{owner}/{repo}/resolve/{rev}/{file} with range requests, the headers
/// hf-hub reads (ETag = sha256, x-repo-commit), at `hub.pace` bytes/s.
async function startHub() {
  const size = statSync(FIXTURE).size;
  const sha = await new Promise((resolve, reject) => {
    const h = createHash("sha256");
    createReadStream(FIXTURE).on("data", (d) => h.update(d)).on("end", () => resolve(h.digest("hex"))).on("error", reject);
  });
  const hub = { pace: 0, requests: 0 };
  // The hub's model API, as far as the Models page's search uses it: one
  // GGUF repository with the fixture and a file too big for any machine.
  const repos = [
    { id: "unsloth/gemma-3-270m-it-GGUF", downloads: 51234, likes: 40 },
    { id: "acme/bee-7b-GGUF", downloads: 17, likes: 1 },
  ];
  const api = (url, res) => {
    const json = (body, status = 200) => res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
    if (url.pathname === "/api/models") {
      const q = (url.searchParams.get("search") ?? "").toLowerCase();
      return json(url.searchParams.get("filter") === "gguf" ? repos.filter((r) => r.id.toLowerCase().includes(q)) : []);
    }
    if (url.pathname === "/api/models/unsloth/gemma-3-270m-it-GGUF/tree/main") {
      return json([
        { type: "file", path: "README.md", size: 2100 },
        { type: "file", path: "gemma-3-270m-it-F16.gguf", size: 135, lfs: { oid: "0".repeat(64), size: 2 * 10 ** 12, pointerSize: 135 } },
        { type: "file", path: "gemma-3-270m-it-Q4_K_M.gguf", size: 135, lfs: { oid: "1".repeat(64), size, pointerSize: 135 } },
      ]);
    }
    return json({ error: "Repository not found" }, 404);
  };
  const server = createHttpServer((req, res) => {
    const url = new URL(req.url, "http://hub");
    if (url.pathname.startsWith("/api/")) return api(url, res);
    if (!/^\/[^/]+\/[^/]+\/resolve\/[^/]+\/.+\.gguf$/.test(req.url)) {
      res.writeHead(404).end("not found");
      return;
    }
    hub.requests++;
    const m = /bytes=(\d+)-(\d*)/.exec(req.headers.range ?? "");
    const start = m ? Number(m[1]) : 0;
    const end = m && m[2] ? Math.min(Number(m[2]), size - 1) : size - 1;
    res.writeHead(206, {
      "content-length": end - start + 1,
      "content-range": `bytes ${start}-${end}/${size}`,
      etag: `"${sha}"`,
      "x-repo-commit": "0123456789abcdef0123456789abcdef01234567",
    });
    const file = createReadStream(FIXTURE, { start, end, highWaterMark: 64 << 10 });
    if (!hub.pace || end - start < 1) {
      file.pipe(res);
      return;
    }
    // Paced: each 64 KiB piece after its share of a second.
    file.on("data", (piece) => {
      file.pause();
      setTimeout(() => res.write(piece, () => file.resume()), (piece.length / hub.pace) * 1000);
    });
    file.on("end", () => res.end());
    res.on("close", () => file.destroy());
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  hub.url = `http://127.0.0.1:${server.address().port}`;
  hub.close = () =>
    new Promise((r) => {
      server.close(r);
      server.closeAllConnections();
    });
  hubs.push(hub);
  hub.size = size;
  return hub;
}

let browser;
const dirs = [];

before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  for (const n of [...nodes]) n.child.kill("SIGKILL");
  // A test that failed left its hub open: it would keep this process alive.
  await Promise.all(hubs.map((h) => h.close()));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function openPage(url, { maxTokens, width = 1100, height = 720 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  if (maxTokens) await context.addInitScript((n) => localStorage.setItem("rbee.maxTokens", String(n)), maxTokens);
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: new URL(url).origin });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(url);
  return { page, errors };
}

test("a message streams in, and the conversation survives a reload and a node restart", async (t) => {
  const dir = dataDirWithFixture();
  dirs.push(dir);
  let node = await startNode(dir);
  const { page, errors } = await openPage(node.url, { maxTokens: 40 });
  // A figure for the README, not a pass mark: when the chat page first painted.
  await page.getByRole("textbox", { name: "Message" }).waitFor();
  const paint = await page.evaluate(() => performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? -1);
  t.diagnostic(`chat page first contentful paint: ${paint.toFixed(0)} ms`);
  const box = page.getByRole("textbox", { name: "Message" });
  await box.fill("Write one sentence about honey bees.");
  // What the answer's place first says (before any token can replace it).
  await page.evaluate(() => {
    window.firstWords = null;
    new MutationObserver((_, o) => {
      const b = document.querySelector(".msg.assistant.streaming .body");
      if (b) {
        window.firstWords = b.textContent;
        o.disconnect();
      }
    }).observe(document.querySelector(".log"), { childList: true, subtree: true });
  });
  await box.press("Enter");

  // The answer grows while it streams: several different partial texts.
  const streaming = page.locator(".msg.assistant.streaming .body");
  await streaming.waitFor();
  const seen = new Set();
  while ((await page.locator(".msg.assistant.streaming").count()) > 0) {
    const t = (await streaming.textContent().catch(() => "")) ?? "";
    if (t && !t.startsWith("Loading ")) seen.add(t);
    await page.waitForTimeout(15);
  }
  assert.ok(seen.size >= 2, `saw ${seen.size} partial texts`);
  assert.equal(await page.evaluate(() => window.firstWords), "Loading gemma-3-270m-q4_k_m on this machine: the first answer takes a few seconds…");
  const answer = page.locator(".msg.assistant").last();
  const meta = await answer.locator(".meta").textContent();
  assert.match(meta, /\d+\.\d tok\/s · answered by this machine/);
  assert.match(meta, /^gemma-3-270m-q4_k_m · /, "the answer names the model that wrote it");
  const text = await answer.locator(".body").textContent();
  assert.ok(text.trim().length > 0);
  await page.screenshot({ path: join(SHOTS, "chat.png") });

  // Copy puts the answer's text on the clipboard.
  await answer.getByRole("button", { name: "Copy" }).click();
  await answer.getByRole("button", { name: "Copied" }).waitFor();
  const clipped = await page.evaluate(() => navigator.clipboard.readText());
  const [stored] = (await (await fetch(`${node.url}/api/conversations`)).json()).data;
  const kept = await (await fetch(`${node.url}/api/conversations/${stored.id}`)).json();
  assert.equal(clipped, kept.messages.at(-1).content, "the answer as written (its Markdown), not as rendered");

  // Export: Markdown to read, JSON with what the node keeps.
  const download = async (name) => {
    const [d] = await Promise.all([page.waitForEvent("download"), page.getByRole("button", { name }).click()]);
    return [d.suggestedFilename(), readFileSync(await d.path(), "utf8")];
  };
  const [mdName, md] = await download("Export .md");
  assert.equal(mdName, "Write one sentence about honey bees.md");
  assert.ok(md.startsWith("# Write one sentence about honey bees.\n\n## You\n\nWrite one sentence about honey bees.\n\n## rbee (gemma-3-270m-q4_k_m)\n\n"), md);
  const [, json] = await download("Export .json");
  const exported = JSON.parse(json);
  assert.deepEqual(exported.messages.map((m) => [m.role, m.model ?? null]), [["user", null], ["assistant", "gemma-3-270m-q4_k_m"]]);

  // The conversation is in the list, titled after the question.
  const item = page.locator(".conversations li .title").first();
  assert.equal(await item.textContent(), "Write one sentence about honey bees.");

  await page.reload();
  await page.locator(".msg.assistant").first().waitFor();
  assert.equal(await page.locator(".msg.user .body").first().textContent(), "Write one sentence about honey bees.");
  assert.equal(await page.locator(".msg.assistant .body").first().textContent(), text);

  await stopNode(node);
  node = await startNode(dir);
  await page.goto(node.url);
  await page.locator(".msg.assistant").first().waitFor();
  assert.equal(await page.locator(".msg.assistant .body").first().textContent(), text);
  assert.deepEqual(errors, []);
  await stopNode(node);
});

test("Stop ends the answer where it is, keeps it marked as stopped, and the node answers the next one", async () => {
  const dir = dataDirWithFixture();
  dirs.push(dir);
  const node = await startNode(dir);
  const { page, errors } = await openPage(node.url);
  const box = page.getByRole("textbox", { name: "Message" });
  await box.fill("Tell me a very long story about a dragon who learns to bake bread.");
  await box.press("Enter");
  const body = page.locator(".msg.assistant.streaming .body");
  await page.waitForFunction(() => (document.querySelector(".msg.assistant.streaming .body:not(.waiting)")?.textContent ?? "").length > 40);
  await page.getByRole("button", { name: "Stop" }).click();
  await page.locator(".msg.assistant.streaming").waitFor({ state: "detached" });
  assert.equal(await body.count(), 0);
  const answer = page.locator(".msg.assistant").last();
  assert.match(await answer.locator(".meta").textContent(), /stopped/);

  // Stored as stopped on the node.
  const list = await (await fetch(`${node.url}/api/conversations`)).json();
  const conv = await (await fetch(`${node.url}/api/conversations/${list.data[0].id}`)).json();
  assert.equal(conv.messages.at(-1).note, "stopped");

  // The slot is free again: a short request is answered.
  const res = await fetch(`${node.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: "gemma-3-270m-q4_k_m", messages: [{ role: "user", content: "Hi" }], max_tokens: 3 }),
  });
  assert.equal(res.status, 200);
  assert.deepEqual(errors, []);
  await stopNode(node);
});

test("the swarm page shows a second node, the models page says where each model is, and a pull copies it from the peer", async () => {
  const hub = await startHub();
  const dir = dataDirWithFixture();
  const other = mkdtempSync(join(tmpdir(), "rbee-browser-"));
  dirs.push(dir, other);
  const code = spawnSync(BIN, ["--data-dir", other, "swarm", "init"], { env: { ...process.env, RBEE_CONFIG: join(other, "none.toml") } }).stdout.toString().trim();
  const [pa, pb] = [await freePort(), await freePort()];
  const a = await startNode(dir, ["--swarm-key", code, "--no-mdns", "--swarm-listen", `/ip4/127.0.0.1/tcp/${pa}`]);
  const b = await startNode(other, ["--swarm-key", code, "--no-mdns", "--swarm-listen", `/ip4/127.0.0.1/tcp/${pb}`, "--peer", `/ip4/127.0.0.1/tcp/${pa}`], {
    HF_ENDPOINT: hub.url,
  });
  const { page, errors } = await openPage(`${b.url}/#/swarm`);
  await page.locator("table tbody tr").nth(1).waitFor();
  assert.equal(await page.locator("table tbody tr").count(), 2);
  assert.equal(await page.locator("table tbody tr.local").count(), 1);
  const remote = page.locator("table tbody tr:not(.local)");
  assert.match(await remote.textContent(), /gemma-3-270m-q4_k_m/, "the other machine's model is listed");
  assert.match(await page.locator(".summary").textContent(), /2 machines up/);
  await page.screenshot({ path: join(SHOTS, "swarm.png") });

  // B has no model of its own: the models page lists A's, on A.
  await page.getByRole("link", { name: "Models" }).click();
  const row = page.locator('tr[data-model="gemma-3-270m-q4_k_m"]');
  await row.waitFor();
  assert.doesNotMatch(await row.textContent(), /this machine/);

  // Pulling the same file at B copies it from A over the LAN: the hub is
  // only asked what the file is (its sha256), and the page says where it came from.
  await page.getByPlaceholder(/Repository/).fill("unsloth/gemma-3-270m-it-GGUF");
  await page.getByPlaceholder(/File/).fill("gemma-3-270m-it-Q4_K_M.gguf");
  await page.getByRole("button", { name: "Pull", exact: true }).click();
  const copied = page.locator('tr[data-model="gemma-3-270m-it-q4_k_m"]');
  await copied.waitFor({ timeout: 60_000 });
  assert.match(await copied.textContent(), /this machine/);
  assert.match(await copied.locator("small.source").textContent(), /^unsloth\/gemma-3-270m-it-GGUF, copied from .+ over the LAN at \d+ MB\/s$/);
  await page.locator('.pulls li[data-state="done"]').waitFor();
  assert.match(await page.locator('.pulls li[data-state="done"] .pull-status').textContent(), /done: gemma-3-270m-it-q4_k_m \(from .+, LAN, \d+ MB\/s\)/);
  assert.equal(hub.requests, 1, "the hub sent nothing but the file's description");
  await page.locator(".pulls").evaluate((e) => e.scrollIntoView({ block: "start" }));
  await page.screenshot({ path: join(SHOTS, "models.png") });

  // A was started with --swarm-key and nothing was saved: its Settings page
  // promises no restart.
  const { page: settingsA, errors: errorsA } = await openPage(`${a.url}/#/settings`);
  await settingsA.getByText(/In swarm /).waitFor();
  assert.equal(await settingsA.locator(".restart").count(), 0, "no restart notice for a key given on the command line");

  // A chat at B on A's model (B has only its copy of the instruct one).
  const made = await fetch(`${b.url}/api/conversations`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ title: "On A's model", model: "gemma-3-270m-q4_k_m" }),
  });
  const chatId = (await made.json()).id;

  // A shuts down: B's Swarm page keeps it, offline, and counts in English.
  await page.getByRole("link", { name: "Swarm" }).click();
  await stopNode(a);
  const gone = page.locator("table tbody tr.down");
  await gone.waitFor();
  assert.match(await gone.textContent(), /offline \(shut down\)/);
  assert.match(await page.locator(".summary").textContent(), /^1 machine up · 1 offline · swarm key /);

  // The chat keeps its model and says it is not available, instead of
  // answering with B's model; sending says why and stores nothing.
  const chat = await openPage(b.url);
  await chat.page.locator(".model-notice").waitFor();
  assert.equal(await chat.page.getByRole("combobox", { name: "Model" }).inputValue(), "gemma-3-270m-q4_k_m");
  assert.match(await chat.page.locator(".model-notice").textContent(), /uses gemma-3-270m-q4_k_m, which no machine in the swarm has right now/);
  await chat.page.getByRole("textbox", { name: "Message" }).fill("Are you there?");
  await chat.page.getByRole("textbox", { name: "Message" }).press("Enter");
  await chat.page.locator(".msg.error").waitFor();
  const kept = await (await fetch(`${b.url}/api/conversations/${chatId}`)).json();
  assert.deepEqual([kept.model, kept.messages.length], ["gemma-3-270m-q4_k_m", 0]);
  await chat.page.screenshot({ path: join(SHOTS, "chat-model-offline.png") });
  assert.deepEqual(chat.errors, []);
  assert.deepEqual(errors, []);
  assert.deepEqual(errorsA.filter((e) => !/ERR_CONNECTION_REFUSED|EventSource/.test(e)), []);
  await stopNode(b);
  await hub.close();
});

test("a pull from the hub shows progress, can be cancelled, ends in the model list, and the model can be deleted", async () => {
  const hub = await startHub();
  const dir = mkdtempSync(join(tmpdir(), "rbee-browser-"));
  dirs.push(dir);
  const node = await startNode(dir, [], { HF_ENDPOINT: hub.url });
  const { page, errors } = await openPage(`${node.url}/#/models`);
  await page.getByText("No models yet").waitFor();

  // Slow enough to see the bar move, then cancel.
  hub.pace = hub.size / 8;
  await page.getByPlaceholder(/Repository/).fill("unsloth/gemma-3-270m-it-GGUF");
  await page.getByPlaceholder(/File/).fill("gemma-3-270m-it-Q4_K_M.gguf");
  await page.getByRole("button", { name: "Pull", exact: true }).click();
  const pull = page.locator(".pulls li").first();
  await page.waitForFunction(() => Number(document.querySelector(".pulls li progress")?.getAttribute("value") ?? 0) > 0);
  const shown = await pull.locator(".pull-status").textContent();
  assert.match(shown, /\d+ MiB of \d+ MiB/);
  await page.screenshot({ path: join(SHOTS, "pull.png") });
  await pull.getByRole("button", { name: "Cancel" }).click();
  await page.locator('.pulls li[data-state="cancelled"]').waitFor();
  assert.equal(await page.getByText("No models yet").count(), 1, "nothing added");

  // Again at full speed: it finishes and the model is in the list, on this machine.
  hub.pace = 0;
  await pull.getByRole("button", { name: "Dismiss" }).click();
  await page.getByRole("button", { name: "Pull", exact: true }).click();
  const row = page.locator('tr[data-model="gemma-3-270m-it-q4_k_m"]');
  await row.waitFor({ timeout: 60_000 });
  assert.match(await row.textContent(), /gemma3.*Q4_K_M.*this machine/);
  assert.match(await page.locator('.pulls li[data-state="done"] .pull-status').textContent(), /done: gemma-3-270m-it-q4_k_m/);

  // Delete (after confirming), and it is gone.
  page.once("dialog", (d) => d.accept());
  await row.getByRole("button", { name: "Delete" }).click();
  await page.getByText("No models yet").waitFor();
  const models = await (await fetch(`${node.url}/v1/models`)).json();
  assert.deepEqual(models.data, []);
  assert.deepEqual(errors, []);
  await stopNode(node);
  await hub.close();
});

test("the models page recommends models with their size and fit, and one click pulls one", async () => {
  const hub = await startHub();
  const dir = mkdtempSync(join(tmpdir(), "rbee-browser-"));
  dirs.push(dir);
  const node = await startNode(dir, [], { HF_ENDPOINT: hub.url });
  const { page, errors } = await openPage(`${node.url}/#/models`);
  const offers = page.locator(".offer");
  await offers.first().waitFor();
  assert.ok((await offers.count()) >= 5);
  const smol = page.locator('.offer[data-offer="SmolLM2-135M-Instruct.Q4_1.gguf"]');
  assert.match(await smol.textContent(), /SmolLM2 135M Instruct.*chat.*98 MB.*fits this machine/);
  await page.screenshot({ path: join(SHOTS, "recommended.png") });
  await smol.getByRole("button", { name: "Pull SmolLM2 135M Instruct" }).click();
  // The stand-in hub serves the fixture's bytes for any file.
  await page.locator('tr[data-model="smollm2-135m-instruct.q4_1"]').waitFor({ timeout: 60_000 });
  await smol.getByText("on this machine").waitFor();
  assert.equal(await smol.getByRole("button").count(), 0, "no Pull once it is here");
  assert.deepEqual(errors, []);
  await stopNode(node);
  await hub.close();
});

test("settings: create a swarm, see its join code, pause sharing, and add an API key", async () => {
  const dir = mkdtempSync(join(tmpdir(), "rbee-browser-"));
  dirs.push(dir);
  const node = await startNode(dir);
  const config = join(dir, "none.toml");
  // Alone, the Swarm page points to Settings rather than to the command line.
  const { page, errors } = await openPage(`${node.url}/#/swarm`);
  await page.getByText("This machine runs alone").waitFor();
  await page.locator(".summary").getByRole("link", { name: "Settings" }).click();
  await page.getByText("Running alone").waitFor();
  await page.getByRole("button", { name: "Create a swarm" }).click();
  const code = page.locator('input[name="join-code"]');
  await code.waitFor();
  const joinCode = await code.inputValue();

  // Replacing it asks first: declined, the join code stays.
  page.once("dialog", (d) => d.dismiss());
  await page.getByRole("button", { name: "Create a new swarm instead" }).click();
  await page.waitForTimeout(200);
  assert.equal(await code.inputValue(), joinCode);
  assert.match(joinCode, /^rbee-swarm-[0-9a-f]{64}$/);
  assert.match(await page.locator(".restart").textContent(), /swarm_key/);
  assert.match(await page.locator(".restart").textContent(), /Restart `rbee serve`/);

  await page.getByLabel(/Share this machine/).uncheck();
  await page.getByText("Sharing paused").waitFor();
  await page.getByRole("button", { name: "Add a key" }).click();
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByText("API settings saved.").waitFor();
  const saved = readFileSync(config, "utf8");
  assert.match(saved, /share = false/);
  assert.match(saved, /api_keys = \["rbee-[A-Za-z0-9_-]+"\]/);
  assert.ok(saved.includes(`swarm_key = "${joinCode}"`), saved);

  // A bad join code is refused with the node's reason, and nothing changes.
  await page.getByPlaceholder("Paste a join code").fill("not a code");
  await page.getByRole("button", { name: "Join" }).click();
  await page.locator(".page-message.error").waitFor();
  assert.equal(readFileSync(config, "utf8"), saved);
  await page.screenshot({ path: join(SHOTS, "settings.png") });
  // The refused PATCH is logged by the browser as a failed load; nothing else.
  assert.deepEqual(errors.filter((e) => !/status of 400/.test(e)), []);
  await stopNode(node);
});

test("narrow windows and the keyboard: the chat list folds away, Escape stops and cancels, scrolling up stops the follow", async () => {
  const dir = dataDirWithFixture();
  dirs.push(dir);
  const node = await startNode(dir);
  const { page, errors } = await openPage(node.url, { maxTokens: 400, width: 700, height: 480 });
  const box = page.getByRole("textbox", { name: "Message" });
  await box.waitFor();
  const focused = () => page.evaluate(() => document.activeElement?.getAttribute("aria-label") ?? document.activeElement?.textContent ?? "");
  assert.equal(await focused(), "Message", "the message box has the focus");

  // Keyboard only: type (Shift+Enter for new lines), Enter sends. A list
  // to continue: taller than the log at once, and the base model goes on
  // counting for the whole answer.
  const question = ["Count on, one number per line:", ...Array.from({ length: 30 }, (_, i) => String(i + 1))].join("\n");
  for (const [i, line] of question.split("\n").entries()) {
    if (i) await page.keyboard.press("Shift+Enter");
    await page.keyboard.type(line);
  }
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => (document.querySelector(".msg.assistant.streaming .body:not(.waiting)")?.textContent ?? "").length > 10);

  // Scrolling up while it streams stops the follow: the log stays where the
  // reader put it, and "Jump to latest" appears.
  const log = page.locator(".log");
  await log.evaluate((e) => (e.scrollTop = 0));
  await page.waitForTimeout(300);
  assert.ok(await page.locator(".msg.assistant.streaming").count(), "still streaming");
  assert.equal(await log.evaluate((e) => e.scrollTop), 0, "not pulled back down");
  const jump = page.getByRole("button", { name: /Jump to latest/ });
  assert.ok(await jump.isVisible());

  // Escape stops the answer; it is kept, marked stopped, and the focus is back in the message box.
  await page.keyboard.press("Escape");
  await page.locator(".msg.assistant.streaming").waitFor({ state: "detached" });
  assert.match(await page.locator(".msg.assistant .meta").last().textContent(), /stopped/);
  assert.equal(await focused(), "Message");
  await jump.click();
  assert.ok(await log.evaluate((e) => e.scrollHeight - e.scrollTop - e.clientHeight < 40), "at the newest text");
  assert.equal(await jump.isVisible(), false);

  // Escape cancels an edit: the question is unchanged and nothing was removed.
  await page.locator(".msg.user").getByRole("button", { name: "Edit" }).click();
  assert.equal(await focused(), "Edit message");
  await page.keyboard.press("Escape");
  await page.locator(".editing").waitFor({ state: "detached" });
  assert.equal(await page.locator(".msg.user .body").textContent(), question);
  assert.equal(await page.locator(".msg.assistant").count(), 1);

  // At 700 px the chat list is folded away behind a button; the chats in it are buttons.
  assert.equal(await page.locator("aside").isVisible(), false);
  await page.screenshot({ path: join(SHOTS, "chat-700.png") });
  const toggle = page.getByRole("button", { name: "Show chats" });
  await toggle.focus();
  await page.keyboard.press("Enter");
  assert.equal(await page.locator("aside").isVisible(), true);
  assert.equal(await toggle.getAttribute("aria-expanded"), "true");
  assert.ok(await page.evaluate(() => document.activeElement?.matches(".conversations li.active button.title")), "focus moves to the open chat's title, a button");
  await page.screenshot({ path: join(SHOTS, "chat-700-list.png") });
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => !document.querySelector(".chat.side-open"));
  assert.equal(await focused(), "Message");

  // No page scrolls sideways at 700 or 400 px.
  for (const width of [700, 400]) {
    await page.setViewportSize({ width, height: 720 });
    for (const name of ["chat", "swarm", "models", "settings"]) {
      await page.goto(`${node.url}/#/${name}`);
      await page.locator(`#nav a.active[data-page="${name}"]`).waitFor();
      await page.waitForTimeout(400);
      const [scroll, client] = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
      assert.ok(scroll <= client, `${name} at ${width} px: ${scroll} px wide in ${client}`);
    }
  }
  await page.goto(`${node.url}/#/chat`);
  await page.locator(".msg.assistant").waitFor();
  await page.locator(".log").evaluate((e) => (e.scrollTop = e.scrollHeight));
  await page.screenshot({ path: join(SHOTS, "chat-400.png") });
  assert.deepEqual(errors, []);
  await stopNode(node);
});

test("a chat keeps its own instructions, temperature and answer length, and sends them with its requests", async () => {
  const dir = dataDirWithFixture();
  dirs.push(dir);
  const node = await startNode(dir);
  const { page, errors } = await openPage(node.url);
  const sent = [];
  page.on("request", (r) => r.url().endsWith("/v1/chat/completions") && sent.push(r.postDataJSON()));
  await page.getByRole("textbox", { name: "Message" }).waitFor();

  // Set before the first message of a new chat: kept until it exists.
  await page.getByRole("button", { name: "Chat settings" }).click();
  await page.getByLabel("Instructions (system prompt)").fill("Answer like a ship's captain.");
  await page.getByLabel(/Temperature/).fill("0.2");
  await page.getByLabel(/Longest answer/).fill("5");
  await page.getByLabel(/Longest answer/).press("Tab");
  await page.screenshot({ path: join(SHOTS, "chat-settings.png") });
  const box = page.getByRole("textbox", { name: "Message" });
  await box.fill("Where are we going?");
  await box.press("Enter");
  await page.locator(".msg.assistant:not(.streaming)").waitFor();
  assert.equal(sent.length, 1);
  assert.deepEqual(sent[0].messages, [
    { role: "system", content: "Answer like a ship's captain." },
    { role: "user", content: "Where are we going?" },
  ]);
  assert.equal(sent[0].temperature, 0.2);
  assert.equal(sent[0].max_tokens, 5);

  // Kept with the conversation on the node: after a reload the panel shows them.
  await page.reload();
  await page.locator(".msg.assistant").waitFor();
  assert.equal(await page.getByRole("button", { name: "Chat settings (3)" }).count(), 1);
  await page.getByRole("button", { name: /Chat settings/ }).click();
  assert.equal(await page.getByLabel("Instructions (system prompt)").inputValue(), "Answer like a ship's captain.");

  // Cleared here, so the next request carries no system prompt; another chat has none either.
  await page.getByLabel("Instructions (system prompt)").fill("");
  await page.getByLabel("Instructions (system prompt)").press("Tab");
  await page.getByText("Saved with this chat.").waitFor();
  await Promise.all([
    page.waitForRequest((r) => r.url().endsWith("/v1/chat/completions")),
    page.locator(".msg.assistant").getByRole("button", { name: "Regenerate" }).click(),
  ]);
  await page.locator(".msg.assistant.streaming").waitFor({ state: "detached" });
  assert.equal(sent.length, 2);
  const last = sent.at(-1);
  assert.deepEqual(last.messages, [{ role: "user", content: "Where are we going?" }]);
  assert.equal(last.max_tokens, 5, "the other settings stay");
  const [conv] = (await (await fetch(`${node.url}/api/conversations`)).json()).data;
  assert.deepEqual([conv.instructions, conv.temperature, conv.max_tokens], [null, 0.2, 5]);
  assert.deepEqual(errors, []);
  await stopNode(node);
});

test("a question left unanswered by a reload offers Retry, and deleting a chat while it answers shows no error", async () => {
  const dir = dataDirWithFixture();
  dirs.push(dir);
  const node = await startNode(dir);
  const { page, errors } = await openPage(node.url, { maxTokens: 300 });
  const box = page.getByRole("textbox", { name: "Message" });
  await box.fill("Tell me a long story about a lighthouse keeper.");
  await box.press("Enter");
  await page.waitForFunction(() => (document.querySelector(".msg.assistant.streaming .body:not(.waiting)")?.textContent ?? "").length > 10);

  // Reloaded mid-answer: the question is there with Retry, which answers it.
  await page.reload();
  const retry = page.locator(".msg.unanswered").getByRole("button", { name: "Retry" });
  await retry.waitFor();
  assert.match(await page.locator(".msg.user .body").textContent(), /lighthouse keeper/);
  await retry.click();
  await page.locator(".msg.assistant .meta").filter({ hasText: "tok/s" }).waitFor({ timeout: 120_000 });
  assert.equal(await page.locator(".msg.unanswered").count(), 0);
  const [conv] = (await (await fetch(`${node.url}/api/conversations`)).json()).data;
  const kept = await (await fetch(`${node.url}/api/conversations/${conv.id}`)).json();
  assert.deepEqual(kept.messages.map((m) => m.role), ["user", "assistant"]);

  // Deleted while it answers: the answer is dropped quietly, no error.
  await box.fill("And another one, please.");
  await box.press("Enter");
  await page.locator(".msg.assistant.streaming").waitFor();
  page.once("dialog", (d) => d.accept());
  await page.locator(".conversations li").first().hover();
  await page.locator(".conversations li").first().getByRole("button", { name: "Delete" }).click();
  await page.locator(".msg.assistant.streaming").waitFor({ state: "detached" });
  await page.waitForTimeout(300);
  assert.equal(await page.locator(".msg.error").count(), 0, "no error about the deleted chat");
  assert.equal(await page.locator(".conversations li").count(), 0);
  assert.deepEqual((await (await fetch(`${node.url}/api/conversations`)).json()).data, []);
  assert.deepEqual(errors, []);
  await stopNode(node);
});

test("the models page searches the hub, lists a repository's files with what fits, pulls one, and the chat uses it", async () => {
  const hub = await startHub();
  const dir = mkdtempSync(join(tmpdir(), "rbee-browser-"));
  dirs.push(dir);
  const node = await startNode(dir, [], { HF_ENDPOINT: hub.url });
  const { page, errors } = await openPage(`${node.url}/#/models`, { maxTokens: 8 });
  const search = page.getByRole("searchbox", { name: "Search Hugging Face" });
  await search.fill("nothing-like-this");
  await search.press("Enter");
  await page.getByText("No GGUF models match").waitFor();
  await search.fill("gemma");
  await search.press("Enter");
  const repo = page.getByRole("button", { name: "unsloth/gemma-3-270m-it-GGUF" });
  await repo.waitFor();
  assert.equal(await page.locator(".hub-repos li").count(), 1, "only what matches");
  await repo.click();
  const q4 = page.locator('.hub-files tr[data-file="gemma-3-270m-it-Q4_K_M.gguf"]');
  await q4.waitFor();
  assert.equal(await page.locator(".hub-files tbody tr").count(), 2, "GGUF files only");
  assert.match(await q4.textContent(), /Q4_K_M.*253 MB.*fits this machine/);
  const f16 = page.locator('.hub-files tr[data-file="gemma-3-270m-it-F16.gguf"]');
  assert.match(await f16.textContent(), /F16.*2000\.0 GB.*needs about 2400\.0 GB; this machine has/);
  await page.screenshot({ path: join(SHOTS, "hub-search.png") });

  // One click pulls it; then it answers in the chat.
  await q4.getByRole("button", { name: "Pull gemma-3-270m-it-Q4_K_M.gguf" }).click();
  await page.locator('tr[data-model="gemma-3-270m-it-q4_k_m"]').waitFor({ timeout: 60_000 });
  await page.getByRole("link", { name: "Chat" }).click();
  const box = page.getByRole("textbox", { name: "Message" });
  await box.fill("Hello");
  await box.press("Enter");
  const meta = page.locator(".msg.assistant:not(.streaming) .meta");
  await meta.waitFor({ timeout: 60_000 });
  assert.match(await meta.textContent(), /^gemma-3-270m-it-q4_k_m · /);

  // Bad input is refused in the API's own format before the hub is asked.
  for (const [path, param] of [["/api/hub/search?q=", "q"], ["/api/hub/files?repo=../etc", "repo"]]) {
    const r = await fetch(`${node.url}${path}`);
    assert.equal(r.status, 400);
    assert.equal((await r.json()).error.param, param);
  }
  assert.deepEqual(errors, []);
  await stopNode(node);
  await hub.close();
});
