//! rbee's desktop app: a node (the same code as `rbee serve`) in this
//! process, a tray icon with a menu, and a window showing the node's chat UI.
//!
//! The window first shows a bundled "starting" page, then the node's own
//! page at its HTTP address: the UI talks to the node over HTTP only, exactly
//! as in a browser, so it needs no IPC and the app grants it none.
//! Closing the window keeps the app in the tray; Quit (or SIGTERM) stops the
//! node gracefully, then exits.

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

use std::sync::Mutex;
use std::time::Duration;

use rbee_node::Service;
use tauri::menu::{CheckMenuItem, CheckMenuItemBuilder, MenuBuilder, MenuItem, MenuItemBuilder};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager, RunEvent, WindowEvent};
use tokio::sync::oneshot;

/// How long Quit waits for the node to finish requests in flight.
const QUIT_GRACE: Duration = Duration::from_secs(5);

/// The app's node while it runs (none before it started or after Quit).
#[derive(Default)]
struct Node(Mutex<Option<Running>>);

struct Running {
    /// Its shutdown begins with `state.begin_shutdown()`.
    state: Service,
    /// Completes when the node has stopped.
    stopped: oneshot::Receiver<()>,
}

impl Node {
    fn state(&self) -> Option<Service> {
        self.0.lock().expect("node lock").as_ref().map(|r| r.state.clone())
    }
}

/// The tray menu's items that change.
struct Tray {
    status: MenuItem<tauri::Wry>,
    pause: CheckMenuItem<tauri::Wry>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,wgpu_hal=off,wgpu_core=warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let app = tauri::Builder::default()
        // A second launch shows the first one's window and exits.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| show_window(app)))
        .manage(Node::default())
        .setup(|app| {
            let tray = tray(app.handle())?;
            app.manage(tray);
            let handle = app.handle().clone();
            tauri::async_runtime::spawn(run_node(handle.clone()));
            tauri::async_runtime::spawn(async move {
                rbee_node::shutdown_signal().await;
                tracing::info!("SIGTERM or Ctrl-C: quitting");
                quit(handle).await;
            });
            Ok(())
        })
        .on_window_event(|window, event| {
            // Closing the window keeps rbee running in the tray.
            if let WindowEvent::CloseRequested { api, .. } = event {
                api.prevent_close();
                if let Err(e) = window.hide() {
                    tracing::warn!(error = %e, "could not hide the window");
                }
            }
        })
        .build(tauri::generate_context!());
    let app = match app {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: rbee could not start its window: {e}");
            std::process::exit(1);
        }
    };
    app.run(|_app, event| {
        // Only Quit (an explicit exit code) ends the app, not the last window.
        if let RunEvent::ExitRequested { api, code: None, .. } = event {
            api.prevent_exit();
        }
    });
}

fn tray(app: &AppHandle) -> tauri::Result<Tray> {
    let open = MenuItemBuilder::with_id("open", "Open chat").build(app)?;
    let status = MenuItemBuilder::with_id("status", "Starting…").enabled(false).build(app)?;
    let pause = CheckMenuItemBuilder::with_id("pause", "Pause sharing").checked(false).enabled(false).build(app)?;
    let quit_item = MenuItemBuilder::with_id("quit", "Quit rbee").build(app)?;
    let menu = MenuBuilder::new(app).item(&open).item(&status).separator().item(&pause).separator().item(&quit_item).build()?;
    let mut builder =
        TrayIconBuilder::with_id("rbee").tooltip("rbee").menu(&menu).show_menu_on_left_click(true).on_menu_event(|app, event| match event.id().as_ref() {
            "open" => show_window(app),
            "pause" => toggle_sharing(app),
            "quit" => {
                tauri::async_runtime::spawn(quit(app.clone()));
            }
            _ => {}
        });
    if let Some(icon) = app.default_window_icon() {
        builder = builder.icon(icon.clone());
    }
    builder.build(app)?;
    Ok(Tray { status, pause })
}

/// Starts the node, points the window at it, and serves until Quit.
async fn run_node(app: AppHandle) {
    let started = match rbee_node::config::load(None, rbee_node::config::Overrides::default()) {
        Ok(cfg) => rbee_node::node::start(cfg).await,
        Err(e) => Err(e),
    };
    let node = match started {
        Ok(n) => n,
        Err(e) => {
            let message = format!("{e:#}");
            tracing::error!("the node did not start: {message}");
            set_status(&app, "rbee could not start");
            show_error(&app, &message);
            return;
        }
    };
    let url = node.url();
    // The one line scripts and tests wait for.
    println!("rbee app: chat at {url}");
    let (stopped_tx, stopped_rx) = oneshot::channel();
    *app.state::<Node>().0.lock().expect("node lock") = Some(Running { state: node.state.clone(), stopped: stopped_rx });
    let tray = app.state::<Tray>();
    if let Err(e) = tray.pause.set_checked(!node.state.sharing()).and_then(|()| tray.pause.set_enabled(node.state.swarm.is_some())) {
        tracing::warn!(error = %e, "tray menu not updated");
    }
    if let Some(w) = app.get_webview_window("main") {
        match url.parse() {
            Ok(u) => {
                if let Err(e) = w.navigate(u) {
                    tracing::error!(error = %e, "the window could not open the chat");
                }
            }
            Err(e) => tracing::error!(error = %e, %url, "not a URL"),
        }
    }
    // The settings page's "Restart now": stop the node, then start the app anew.
    let handle = app.clone();
    node.state.set_restart_hook(move || {
        let handle = handle.clone();
        tauri::async_runtime::spawn(async move {
            stop_node(&handle).await;
            tracing::info!("restarting to apply new settings");
            handle.restart();
        });
    });
    tauri::async_runtime::spawn(keep_status(app.clone(), node.state.clone()));
    let stop = node.state.stopped();
    if let Err(e) = node.serve(stop).await {
        tracing::error!("the node stopped: {e:#}");
    }
    let _ = stopped_tx.send(());
}

/// Keeps the tray's status line current: peers and the models ready.
async fn keep_status(app: AppHandle, state: Service) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        set_status(&app, &state.status().to_string());
    }
}

fn set_status(app: &AppHandle, text: &str) {
    if let Some(t) = app.try_state::<Tray>() {
        let _ = t.status.set_text(text);
    }
    if let Some(tray) = app.tray_by_id("rbee") {
        let _ = tray.set_tooltip(Some(format!("rbee — {text}")));
    }
}

fn toggle_sharing(app: &AppHandle) {
    let Some(state) = app.state::<Node>().state() else { return };
    state.set_sharing(!state.sharing());
    let t = app.state::<Tray>();
    let _ = t.pause.set_checked(!state.sharing());
    set_status(app, &state.status().to_string());
}

fn show_window(app: &AppHandle) {
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.unminimize();
        let _ = w.show();
        let _ = w.set_focus();
    }
}

/// Shows why the node did not start, on the bundled page (`?error=…`).
fn show_error(app: &AppHandle, message: &str) {
    let Some(w) = app.get_webview_window("main") else { return };
    match w.url() {
        Ok(mut url) => {
            url.set_path("/index.html");
            url.query_pairs_mut().clear().append_pair("error", message);
            if let Err(e) = w.navigate(url) {
                tracing::error!(error = %e, "could not show the error");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not show the error"),
    }
    show_window(app);
}

/// Stops the node (requests in flight get [`QUIT_GRACE`]) and exits.
async fn quit(app: AppHandle) {
    stop_node(&app).await;
    tracing::info!("rbee app quit");
    app.exit(0);
}

/// Stops the node gracefully, waiting at most [`QUIT_GRACE`].
async fn stop_node(app: &AppHandle) {
    let running = app.state::<Node>().0.lock().expect("node lock").take();
    if let Some(Running { state, stopped }) = running {
        state.begin_shutdown();
        if tokio::time::timeout(QUIT_GRACE, stopped).await.is_err() {
            tracing::warn!("requests still running after {QUIT_GRACE:?}; stopping anyway");
        }
    }
}
