"""The desktop app, started as a user would, under Xvfb with a D-Bus session.

Run by e2e/app/run.sh inside `dbus-run-session -- xvfb-run …` with Debian's
python3 (python3-dbus). Checks, on a chat model (SmolLM2-135M-Instruct, which
a first run on a small machine imports):
  - the window shows the chat UI (the screen, captured with ImageMagick,
    holds the page's accent-coloured brand and Send button; the page has its
    navigation and message box);
  - the tray icon registers and its menu has Open chat, a status line,
    Pause sharing and Quit;
  - a message typed in the window gets an answer (not a continuation of it);
  - closing the window (WM_DELETE_WINDOW, as a window manager sends it)
    hides it and the app keeps serving; Open chat in the tray shows it;
  - Quit in the tray menu exits, with the node shut down (its port closed);
  - with its port taken, the window says why the node did not start;
  - POST /api/restart (the settings page's "Restart now") restarts it;
  - a second launch exits and leaves the first running (single instance);
  - SIGTERM exits 0, with the node's "stopped" in the log.
Prints the figures the README reports: start to ready chat, idle RSS.

Usage: test.py APP_BINARY RBEE_BINARY FIXTURE SCREENSHOT_DIR
"""

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import dbus
from Xlib import X, display, protocol

APP, RBEE, FIXTURE, SHOTS = sys.argv[1:5]
HERE = os.path.dirname(os.path.abspath(__file__))
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what, f, timeout=60.0, every=0.1):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            v = f()
            if v:
                return v
            last = v
        except Exception as e:  # not there yet
            last = e
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what} (last: {last!r})")


def http(method, url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def gone(pid):
    """The process has exited (a zombie counts: its parent may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def descendants(pid):
    """pid and every process below it."""
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def app_window(pid):
    """The app's top-level X window (the one titled "rbee" with its pid)."""
    d = display.Display()
    pid_atom = d.intern_atom("_NET_WM_PID")
    for w in d.screen().root.query_tree().children:
        try:
            p = w.get_full_property(pid_atom, X.AnyPropertyType)
            if p and p.value[0] == pid and w.get_wm_name() == "rbee":
                return d, w
        except Exception:  # windows come and go
            pass
    return None


def close_window(d, w):
    """What a window manager does when the user clicks the close button."""
    protocols, delete = d.intern_atom("WM_PROTOCOLS"), d.intern_atom("WM_DELETE_WINDOW")
    w.send_event(protocol.event.ClientMessage(window=w, client_type=protocols, data=(32, [delete, X.CurrentTime, 0, 0, 0])))
    d.flush()


def viewable(d, w):
    return w.get_attributes().map_state == X.IsViewable


# A user's home of its own: config and data dirs, the chat model imported.
home = tempfile.mkdtemp(prefix="rbee-app-")
atexit.register(shutil.rmtree, home, ignore_errors=True)  # however the test ends
port = free_port()
env = dict(
    os.environ,
    HOME=home,
    XDG_CONFIG_HOME=f"{home}/.config",
    XDG_DATA_HOME=f"{home}/.local/share",
    XDG_CACHE_HOME=f"{home}/.cache",
    RUST_LOG="info,wgpu_hal=off,wgpu_core=warn",
    # WebKitGTK under Xvfb: no GPU, no compositor.
    WEBKIT_DISABLE_COMPOSITING_MODE="1",
    LIBGL_ALWAYS_SOFTWARE="1",
)
for k in ("RBEE_CONFIG", "RBEE_DATA_DIR", "RBEE_LISTEN", "RBEE_SWARM_KEY"):
    env.pop(k, None)
os.makedirs(f"{home}/.config/rbee")
# In a swarm of its own (so Pause sharing applies), on loopback with mDNS
# off: the test sends nothing beyond this machine.
swarm_key = subprocess.run([RBEE, "swarm", "init"], env=env, check=True, capture_output=True, text=True).stdout.strip()
with open(f"{home}/.config/rbee/config.toml", "w") as f:
    f.write(f'listen = "127.0.0.1:{port}"\nswarm_key = "{swarm_key}"\nmdns = false\nswarm_listen = "/ip4/127.0.0.1/tcp/{free_port()}"\n')
subprocess.run([RBEE, "models", "import", FIXTURE], env=env, check=True, capture_output=True)
base = f"http://127.0.0.1:{port}"

bus = dbus.SessionBus()
watcher = subprocess.Popen(["/usr/bin/python3", f"{HERE}/sni_watcher.py"], stdout=subprocess.PIPE, text=True)
assert watcher.stdout.readline().strip() == "watcher ready"
driver_port = free_port()
driver = subprocess.Popen(
    ["WebKitWebDriver", f"--port={driver_port}"],
    env=dict(env, TAURI_WEBVIEW_AUTOMATION="true"),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
wd = f"http://127.0.0.1:{driver_port}"
app_pid = None


def new_session():
    """WebKitWebDriver starts the app (with automation on) and drives its window."""
    status, s = http(
        "POST",
        f"{wd}/session",
        {"capabilities": {"alwaysMatch": {"browserName": "wry", "webkitgtk:browserOptions": {"binary": APP, "args": []}}}},
        timeout=120,
    )
    assert status == 200, s
    return f"{wd}/session/{s['value']['sessionId']}"


try:
    wait("WebKitWebDriver", lambda: port_open(driver_port), 20)

    # --- The app starts (WebKitWebDriver launches it) and shows the chat.
    t0 = time.monotonic()
    sess = new_session()
    app_pid = wait(
        "the app's process",
        lambda: next((p for p in descendants(driver.pid) if os.path.realpath(f"/proc/{p}/exe") == os.path.realpath(APP)), None),
    )

    def find(css, session=sess):
        st, v = http("POST", f"{session}/element", {"using": "css selector", "value": css})
        return v["value"]["element-6066-11e4-a52e-4f735466cecf"] if st == 200 else None

    def text(el, session=sess):
        return http("GET", f"{session}/element/{el}/text")[1]["value"]

    box = wait("the chat's message box", lambda: http("GET", f"{sess}/url")[1]["value"].startswith(base) and find('textarea[aria-label="Message"]'), 120)
    ready_s = time.monotonic() - t0
    check(True, f"the window shows the node's chat page at {base}/")
    nav = text(find("#nav"))
    check(all(w in nav for w in ("Chat", "Swarm", "Models", "Settings")), f"the page has its navigation: {nav!r}")

    # The screen itself: the accent colour of the brand and Send button is there.
    time.sleep(1.0)
    os.makedirs(SHOTS, exist_ok=True)
    shot = f"{SHOTS}/app-start.png"
    subprocess.run(["import", "-window", "root", shot], check=True)
    hist = subprocess.run(
        ["convert", shot, "-fuzz", "8%", "-fill", "black", "+opaque", "#e0a400", "-fill", "white", "-opaque", "#e0a400", "-format", "%[fx:mean*w*h]", "info:"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    accent = float(hist)
    check(accent > 500, f"the screenshot shows the chat page's accent-coloured brand and Send button ({accent:.0f} px)")

    # --- The tray icon registered, with its menu.
    watcher_obj = bus.get_object("org.kde.StatusNotifierWatcher", "/StatusNotifierWatcher")
    items = wait(
        "the tray icon",
        lambda: list(watcher_obj.Get("org.kde.StatusNotifierWatcher", "RegisteredStatusNotifierItems", dbus_interface=dbus.PROPERTIES_IFACE)),
        20,
    )
    check(len(items) == 1, f"one tray icon registered: {items}")
    name, _, path = items[0].partition("/")
    item = bus.get_object(name, "/" + path)
    menu_path = item.Get("org.kde.StatusNotifierItem", "Menu", dbus_interface=dbus.PROPERTIES_IFACE)
    menu = bus.get_object(name, menu_path)

    def menu_items():
        _, layout = menu.GetLayout(0, -1, [], dbus_interface="com.canonical.dbusmenu")
        return {str(c[1].get("label", "")): int(c[0]) for c in layout[2] if c[1].get("label")}

    labels = wait("the status line", lambda: (lambda m: m if any("model" in k for k in m) else None)(menu_items()), 20)
    check(
        "Open chat" in labels and "Pause sharing" in labels and "Quit rbee" in labels,
        f"the tray menu: {list(labels)}",
    )
    check(any(k.startswith("0 peers · ") for k in labels), "the tray's status line says how the node stands")

    # Pause sharing: the node stops taking the swarm's requests, and says so.
    menu.Event(labels["Pause sharing"], "clicked", dbus.String("", variant_level=1), dbus.UInt32(0), dbus_interface="com.canonical.dbusmenu")
    paused = wait("sharing paused", lambda: http("GET", f"{base}/api/settings")[1]["share"] is False, 10)
    line = wait("the status line to say so", lambda: next((k for k in menu_items() if "sharing paused" in k), None), 10)
    check(paused and bool(line), f"Pause sharing in the tray stops sharing: {line!r}")

    # --- A message typed in the window gets an answer from the chat model
    # (kept short: CPU time is shared with the rest of the suite).
    http("POST", f"{sess}/execute/sync", {"script": "localStorage.setItem('rbee.maxTokens', '24')", "args": []})
    http("POST", f"{sess}/element/{box}/value", {"text": "Say hello in three words."})
    http("POST", f"{sess}/element/{box}/value", {"text": "\ue007"})
    wait("the question in the chat", lambda: find(".msg.user"), 10)
    meta = wait("the answer", lambda: (lambda el: el and "tok/s" in text(el) and el)(find(".msg.assistant:not(.streaming) .meta")), 120)
    answer = text(find(".msg.assistant .body"))
    # A base model continues the question ("Say hello in three words.
    # staanmodel"); an instruct model answers it.
    check(bool(answer.strip()) and not answer.strip().lower().startswith("say hello"), f"the answer: {answer!r} ({text(meta)})")
    status, convs = http("GET", f"{base}/api/conversations")
    check(status == 200 and len(convs["data"]) == 1, "the conversation is kept by the node")
    # The window (1100×760 at the top left: Xvfb has no window manager).
    subprocess.run(["import", "-window", "root", "-crop", "1100x760+0+0", "+repage", f"{SHOTS}/app.png"], check=True)

    # --- Closing the window keeps rbee in the tray; Open chat brings it back.
    d, win = wait("the app's window", lambda: app_window(app_pid), 10)
    close_window(d, win)
    hidden = wait("the window to hide", lambda: not viewable(d, win), 10)
    serving = os.path.exists(f"/proc/{app_pid}") and http("GET", f"{base}/health")[0] == 200
    check(hidden and serving, "closing the window hides it; the app and its node keep running")
    menu.Event(labels["Open chat"], "clicked", dbus.String("", variant_level=1), dbus.UInt32(0), dbus_interface="com.canonical.dbusmenu")
    check(wait("the window to show", lambda: viewable(d, win), 10), "Open chat in the tray shows the window again")

    # --- Idle memory: the app and its WebKit processes.
    time.sleep(5)
    pids = descendants(app_pid)
    idle = rss_mib(pids)
    app_only = rss_mib([app_pid])

    # --- Quit from the tray: the app exits and the node's port closes.
    t_quit = time.monotonic()
    menu.Event(labels["Quit rbee"], "clicked", dbus.String("", variant_level=1), dbus.UInt32(0), dbus_interface="com.canonical.dbusmenu")
    wait("the app to exit", lambda: gone(app_pid), 15)
    quit_s = time.monotonic() - t_quit
    check(not port_open(port), f"Quit in the tray menu exits the app in {quit_s:.1f} s and the node's port is closed")
    app_pid = None
    http("DELETE", sess)

    # --- A node that cannot start (its port taken): the window says why.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the last run's TIME_WAIT
        taken.bind(("127.0.0.1", port))
        taken.listen()
        broken = new_session()
        reason = wait("the reason in the window", lambda: (lambda el: el and text(el, broken))(find("#error", broken)), 30)
        check("is another rbee running?" in reason, f"with its port taken the window says why: {reason!r}")
        http("DELETE", broken)
finally:
    if app_pid:
        os.kill(app_pid, signal.SIGKILL)
    driver.terminate()
    driver.wait(10)

def app_processes():
    out = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and not gone(int(p)) and os.path.realpath(f"/proc/{p}/exe") == os.path.realpath(APP):
                out.append(int(p))
        except OSError:
            pass
    return out


# --- The settings page's "Restart now": the app stops its node and starts anew.
app = subprocess.Popen([APP], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
try:
    app.stdout.readline()
    wait("the node", lambda: http("GET", f"{base}/health")[0] == 200, 30)
    status, _ = http("POST", f"{base}/api/restart")
    code = app.wait(15)
    again = wait("the restarted app", lambda: [p for p in app_processes() if p != app.pid], 30)
    up = wait("the restarted node", lambda: http("GET", f"{base}/health")[0] == 200, 30)
    check(status == 202 and code == 0 and up, f"POST /api/restart: the app exits ({code}) and a new one serves again")
    for p in again:
        os.kill(p, signal.SIGTERM)
    # Gone, not only its port closed: until then it is the single instance.
    wait("the restarted app to quit", lambda: all(gone(p) for p in again) and not port_open(port), 15)
finally:
    if app.poll() is None:
        app.kill()

# --- SIGTERM: started directly, the app stops its node and exits 0.
app = subprocess.Popen([APP], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
try:
    line = app.stdout.readline()
    check(line.startswith("rbee app: chat at "), f"started directly, the app says where its chat is: {line.strip()!r}")
    wait("the node", lambda: http("GET", f"{base}/health")[0] == 200, 30)
    # A second launch hands over to the first (which shows its window) and exits.
    second = subprocess.run([APP], env=env, capture_output=True, text=True, timeout=30)
    check(
        second.returncode == 0 and "chat at" not in second.stdout and app.poll() is None and http("GET", f"{base}/health")[0] == 200,
        f"a second launch exits ({second.returncode}) and the first keeps running",
    )
    app.send_signal(signal.SIGTERM)
    code = app.wait(15)
    log = app.stderr.read()
    check(code == 0, f"SIGTERM: exit status {code}")
    check("stopped" in log and "rbee app quit" in log, "the node shut down before the app exited")
finally:
    if app.poll() is None:
        app.kill()
    watcher.terminate()
    watcher.wait(5)

print(f"figure: app start to a ready chat (via WebKitWebDriver) {ready_s:.2f} s")
print(f"figure: idle RSS {idle:.0f} MiB in all ({app_only:.0f} MiB the app with its node, the rest WebKit's {len(pids) - 1} processes)")
print(f"figure: quit from the tray {quit_s:.2f} s")
if failures:
    print(f"{len(failures)} app check(s) failed", file=sys.stderr)
    sys.exit(1)
print("app: all checks passed")
