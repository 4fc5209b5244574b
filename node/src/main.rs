//! The `rbee` command.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rbee_engine::store::{Progress, ProgressFn};
use rbee_engine::{Engine, Event, Message, Prompt, Request, SamplingParams};
use rbee_node::config::{self, Config, Overrides};

#[derive(Parser)]
#[command(name = "rbee", version, about = "Run LLMs on the machines your office already has")]
struct Cli {
    /// Where models and the catalog live [env: RBEE_DATA_DIR] [default: ~/.local/share/rbee].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The TOML config file [env: RBEE_CONFIG] [default: ~/.config/rbee/config.toml].
    #[arg(long, global = true, env = "RBEE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run this machine's node: the OpenAI-compatible API at http://127.0.0.1:7833/v1.
    Serve(ServeArgs),
    /// The swarm: `rbee swarm init` prints a new join code.
    Swarm {
        #[command(subcommand)]
        command: SwarmCommand,
    },
    /// List the nodes of the swarm as the running node sees them.
    Peers {
        /// The node's API [default: the configured listen address].
        #[arg(long)]
        url: Option<String>,
    },
    /// Chat with a model in the terminal (streams the answers; /clear forgets, /exit or Ctrl-D quits).
    Chat {
        /// Model id or a unique prefix; may be left out when there is only one model.
        model: Option<String>,
        /// A system prompt for the conversation.
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = SamplingParams::default().temperature)]
        temperature: f32,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 1024)]
        max_tokens: usize,
    },
    /// Manage the models on this machine.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Generate text from a prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// Show this machine's CPU, memory, GPUs and usable devices.
    Hw,
}

/// Settings of `rbee serve`; each also reads `RBEE_<NAME>` and the config file (flags win).
#[derive(clap::Args)]
struct ServeArgs {
    /// Address of the API [env: RBEE_LISTEN] [default: 127.0.0.1:7833]. Beyond loopback needs api_keys.
    #[arg(long)]
    listen: Option<String>,
    /// Concurrent generations per loaded model [env: RBEE_SLOTS] [default: 4].
    #[arg(long)]
    slots: Option<usize>,
    /// Requests that may wait for a busy model before 503s [env: RBEE_QUEUE_DEPTH] [default: 16].
    #[arg(long)]
    queue_depth: Option<usize>,
    /// Unload a model after this many idle seconds [env: RBEE_IDLE_TIMEOUT_SECS] [default: 300].
    #[arg(long)]
    idle_timeout_secs: Option<f64>,
    /// Most tokens of context per sequence [env: RBEE_MAX_CONTEXT] [default: 8192].
    #[arg(long)]
    max_context: Option<usize>,
    /// Where models run: auto (the first GPU this build can use), cpu, cuda, cuda:N or metal [env: RBEE_DEVICE] [default: auto].
    #[arg(long)]
    device: Option<String>,
    /// Browser origin allowed to call the API besides loopback pages; repeatable, `*` = any [env: RBEE_CORS_ORIGINS].
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// A host name the API answers to besides IP addresses, localhost and this machine's hostname; repeatable, `*` = any [env: RBEE_ALLOWED_HOSTS].
    #[arg(long = "allowed-host")]
    allowed_hosts: Vec<String>,
    /// Seconds in-flight requests get to finish after SIGTERM/Ctrl-C [env: RBEE_SHUTDOWN_GRACE_SECS] [default: 30].
    #[arg(long)]
    shutdown_grace_secs: Option<f64>,
    /// Seconds of silence after which a stream sends a keep-alive comment [env: RBEE_KEEP_ALIVE_SECS] [default: 5].
    #[arg(long)]
    keep_alive_secs: Option<f64>,
    /// Join the swarm with this join code (from `rbee swarm init`) [env: RBEE_SWARM_KEY]. Without one the node runs alone.
    #[arg(long)]
    swarm_key: Option<String>,
    /// A peer to dial besides those mDNS finds, e.g. /ip4/192.168.1.20/tcp/7834; repeatable [env: RBEE_PEERS].
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Use the swarm without running requests for it [env: RBEE_SHARE=false].
    #[arg(long)]
    no_share: bool,
    /// The swarm's listen address [env: RBEE_SWARM_LISTEN] [default: /ip4/0.0.0.0/tcp/7834].
    #[arg(long)]
    swarm_listen: Option<String>,
    /// Do not look for peers by mDNS (use --peer) [env: RBEE_MDNS=false].
    #[arg(long)]
    no_mdns: bool,
}

#[derive(Subcommand)]
enum SwarmCommand {
    /// Create a new swarm: prints its join code, which every machine of the swarm passes to `rbee serve --swarm-key`.
    Init,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Copy a local GGUF file into the store.
    Import { path: PathBuf },
    /// Download a GGUF file from a Hugging Face repository.
    Pull {
        /// Repository, e.g. `unsloth/gemma-3-270m-it-GGUF`.
        repo: String,
        /// File in the repository, e.g. `gemma-3-270m-it-Q4_K_M.gguf`.
        file: String,
        #[arg(long, default_value = "main")]
        revision: String,
        /// Hugging Face or a mirror of its paths [env: HF_ENDPOINT] [default: https://huggingface.co].
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// List the models in the store.
    Ls,
    /// Delete a model.
    Rm { id: String },
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Model id (or a unique prefix of one).
    model: String,
    /// Text to continue (or, with --chat, the user's message).
    prompt: String,
    /// Treat the prompt as a chat message and apply the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = SamplingParams::default().temperature)]
    temperature: f32,
    #[arg(long, default_value_t = SamplingParams::default().top_k)]
    top_k: usize,
    #[arg(long, default_value_t = SamplingParams::default().top_p)]
    top_p: f32,
    #[arg(long, default_value_t = SamplingParams::default().min_p)]
    min_p: f32,
    #[arg(long, default_value_t = SamplingParams::default().repetition_penalty)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = SamplingParams::default().presence_penalty)]
    presence_penalty: f32,
    #[arg(long, default_value_t = SamplingParams::default().frequency_penalty)]
    frequency_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep going past the end-of-turn token (for fixed-length benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Print load time, token counts and speeds to stderr at the end.
    #[arg(long)]
    stats: bool,
    /// Like --stats, as one JSON object.
    #[arg(long)]
    stats_json: bool,
}

fn main() {
    let cli = Cli::parse();
    // wgpu reports every adapter it cannot open (no GPU driver) as an error.
    let default_level = if matches!(cli.command, Command::Serve(_)) { "info,wgpu_hal=off,wgpu_core=warn" } else { "warn,wgpu_hal=off" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let mut flags = Overrides { data_dir: cli.data_dir, ..Overrides::default() };
    if let Command::Serve(a) = &cli.command {
        flags = Overrides {
            listen: a.listen.clone(),
            slots: a.slots,
            queue_depth: a.queue_depth,
            idle_timeout_secs: a.idle_timeout_secs,
            max_context: a.max_context,
            device: a.device.clone(),
            cors_origins: (!a.cors_origins.is_empty()).then(|| a.cors_origins.clone()),
            allowed_hosts: (!a.allowed_hosts.is_empty()).then(|| a.allowed_hosts.clone()),
            shutdown_grace_secs: a.shutdown_grace_secs,
            keep_alive_secs: a.keep_alive_secs,
            swarm_key: a.swarm_key.clone(),
            peers: (!a.peers.is_empty()).then(|| a.peers.clone()),
            share: a.no_share.then_some(false),
            swarm_listen: a.swarm_listen.clone(),
            mdns: a.no_mdns.then_some(false),
            ..flags
        };
    }
    let cfg = config::load(cli.config, flags)?;
    match cli.command {
        Command::Serve(_) => serve(cfg),
        Command::Swarm { command: SwarmCommand::Init } => {
            let key = rbee_swarm::SwarmKey::generate();
            println!("{}", key.join_code());
            eprintln!(
                "new swarm {}: start every machine with `rbee serve --swarm-key CODE` (or swarm_key in the config file). Keep the code private: it is the swarm's password.",
                key.fingerprint()
            );
            Ok(())
        }
        Command::Peers { url } => peers(&cfg, url),
        Command::Chat { model, system, temperature, seed, max_tokens } => chat(&cfg, model, system, temperature, seed, max_tokens),
        Command::Models { command } => models(&cfg, command),
        Command::Generate(args) => generate(&cfg, args),
        Command::Hw => {
            println!("{}", serde_json_pretty(&rbee_engine::hardware::probe()));
            Ok(())
        }
    }
}

fn serde_json_pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn serve(cfg: Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let node = rbee_node::node::start(cfg).await?;
        // The one line scripts and tests wait for.
        println!("rbee listening on http://{}/v1", node.addr);
        std::io::stdout().flush()?;
        node.serve(rbee_node::shutdown_signal()).await
    })
}

fn peers(cfg: &Config, url: Option<String>) -> Result<()> {
    let base = url.unwrap_or_else(|| {
        let mut a = cfg.listen;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{a}")
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let v: rbee_node::swarm::View = rt
        .block_on(async {
            let mut req = reqwest::Client::new().get(format!("{}/api/swarm", base.trim_end_matches('/')));
            if let Some(k) = cfg.api_keys.first() {
                req = req.bearer_auth(k);
            }
            req.send().await?.error_for_status()?.json().await
        })
        .with_context(|| format!("asking the node at {base} (is `rbee serve` running?)"))?;
    if !v.enabled {
        println!("{}", v.message.as_deref().unwrap_or("running alone"));
        return Ok(());
    }
    let this = v.node_id.as_ref().map(ToString::to_string).unwrap_or_default();
    println!("swarm key {} · this node {this}", v.swarm_key_fingerprint.as_deref().unwrap_or(""));
    println!("{:<14} {:<16} {:<7} {:>7} {:>8}  {:<30} ON DISK", "NODE", "HOST", "STATE", "SEEN", "RTT", "LOADED (busy/slots, tok/s)");
    for p in &v.peers {
        let id = p.peer.node_id.as_str();
        let short = if id.len() > 12 { &id[id.len() - 12..] } else { id };
        let r = &p.peer.record;
        let loaded: Vec<String> = r.models_loaded.iter().map(|m| format!("{} {}/{} {:.0}", m.id, m.busy, m.slots, m.decode_tps)).collect();
        let disk: Vec<&str> = r.models_on_disk.iter().map(|m| m.id.as_str()).collect();
        println!(
            "{:<14} {:<16} {:<7} {:>6}s {:>8}  {:<30} {}",
            format!("{short}{}", if p.peer.local { "*" } else { "" }),
            r.hostname,
            match p.peer.status {
                rbee_swarm::registry::Status::Up => "up",
                rbee_swarm::registry::Status::Suspect => "suspect",
                rbee_swarm::registry::Status::Down => "down",
                rbee_swarm::registry::Status::Left => "left",
            },
            p.peer.last_seen_ms / 1000,
            p.rtt_ms.map_or_else(|| "-".to_string(), |ms| format!("{ms:.1}ms")),
            loaded.join(", "),
            disk.join(", ")
        );
    }
    Ok(())
}

fn chat(cfg: &Config, model: Option<String>, system: Option<String>, temperature: f32, seed: Option<u64>, max_tokens: usize) -> Result<()> {
    use std::io::{BufRead, IsTerminal};
    let engine = open_engine(cfg, 1)?;
    let model = match model {
        Some(m) => engine.store().get(&m)?.id,
        None => {
            let all = engine.store().list()?;
            match all.as_slice() {
                [one] => one.id.clone(),
                [] => bail!("no models yet: `rbee models import FILE.gguf` or `rbee models pull REPO FILE`"),
                many => bail!("several models; name one: {}", many.iter().map(|e| e.id.as_str()).collect::<Vec<_>>().join(", ")),
            }
        }
    };
    engine.model(&model)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("chatting with {model}; /clear forgets the conversation, /exit or Ctrl-D quits");
    }
    let mut history: Vec<Message> = system.iter().map(|s| Message::new("system", s.clone())).collect();
    let base = history.clone();
    let mut out = std::io::stdout().lock();
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            write!(out, ">>> ")?;
            out.flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        match line.trim() {
            "" => continue,
            "/exit" | "/bye" => break,
            "/clear" => {
                history.clone_from(&base);
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let params = SamplingParams { temperature, seed, max_tokens: Some(max_tokens), ..SamplingParams::default() };
        let mut g = engine.generate(&model, Request { prompt: Prompt::Chat(history.clone()), params })?;
        let mut answer = String::new();
        while let Some(ev) = g.events.blocking_recv() {
            match ev {
                Event::Text { text: t, .. } => {
                    out.write_all(t.as_bytes())?;
                    out.flush()?;
                    answer.push_str(&t);
                }
                Event::Done { .. } => break,
                Event::Error(e) => bail!("generation failed: {e}"),
                // The CLI offers no tools, so the model makes no calls.
                Event::ToolCall { .. } | Event::ToolArguments { .. } => {}
            }
        }
        writeln!(out)?;
        history.push(Message::new("assistant", answer));
    }
    Ok(())
}

/// The engine of a command that runs in this process (not `serve`): the
/// node's settings, with `slots` sequences per model.
fn open_engine(cfg: &Config, slots: usize) -> Result<Engine> {
    let mut engine_cfg = cfg.engine();
    engine_cfg.slots = slots;
    let engine = Engine::new(engine_cfg).with_context(|| format!("opening the model store in {}", cfg.data_dir.display()))?;
    for w in engine.store().warnings() {
        eprintln!("warning: {w}");
    }
    Ok(engine)
}

fn progress_bar(msg: &str) -> (ProgressBar, ProgressFn) {
    let bar = ProgressBar::new(0).with_message(msg.to_string());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").expect("valid template").progress_chars("=> "),
    );
    let b = bar.clone();
    let f: ProgressFn = Arc::new(move |p| match p {
        Progress::Started { total, already } => {
            b.set_length(total);
            b.set_position(already);
        }
        Progress::Advanced { done } => b.set_position(done),
        Progress::Finished => b.finish_and_clear(),
    });
    (bar, f)
}

fn models(cfg: &Config, command: ModelsCommand) -> Result<()> {
    let hf_endpoint = cfg.hf_endpoint.as_str();
    let engine = open_engine(cfg, 1)?;
    let store = engine.store();
    match command {
        ModelsCommand::Import { path } => {
            let (bar, f) = progress_bar("importing");
            let e = store.import(&path, Some(f)).with_context(|| format!("importing {}", path.display()));
            bar.finish_and_clear();
            let e = e?;
            println!("imported {} ({}, {}, {})", e.id, e.architecture, e.quantization, human_size(e.size));
        }
        ModelsCommand::Pull { repo, file, revision, endpoint } => {
            let (bar, f) = progress_bar("pulling");
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let endpoint = endpoint.unwrap_or_else(|| hf_endpoint.to_string());
            let e = rt.block_on(store.pull(&endpoint, &repo, &file, &revision, Some(f)));
            bar.finish_and_clear();
            let e = e?;
            println!("pulled {} ({}, {}, {})", e.id, e.architecture, e.quantization, human_size(e.size));
        }
        ModelsCommand::Ls => {
            let list = store.list()?;
            if list.is_empty() {
                println!("no models yet: `rbee models import FILE.gguf` or `rbee models pull REPO FILE`");
                return Ok(());
            }
            println!("{:<32} {:<8} {:<8} {:>9} {:>8}  SHA256", "ID", "ARCH", "QUANT", "SIZE", "CONTEXT");
            for e in list {
                println!("{:<32} {:<8} {:<8} {:>9} {:>8}  {}", e.id, e.architecture, e.quantization, human_size(e.size), e.context_length, &e.sha256[..12]);
            }
        }
        ModelsCommand::Rm { id } => {
            let e = store.remove(&id)?;
            println!("removed {}", e.id);
        }
    }
    Ok(())
}

fn generate(cfg: &Config, a: GenerateArgs) -> Result<()> {
    let engine = open_engine(cfg, 1)?;
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repeat_penalty,
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
        seed: a.seed,
        max_tokens: Some(a.max_tokens),
        stop: a.stop,
        ignore_eos: a.ignore_eos,
        ..SamplingParams::default()
    };
    let load_start = std::time::Instant::now();
    engine.model(&a.model)?;
    let load_secs = load_start.elapsed().as_secs_f64();
    let prompt = if a.chat { Prompt::Chat(vec![Message::new("user", a.prompt)]) } else { Prompt::Text(a.prompt) };
    let mut generation = engine.generate(&a.model, Request { prompt, params })?;
    let mut out = std::io::stdout().lock();
    while let Some(ev) = generation.events.blocking_recv() {
        match ev {
            Event::Text { text: t, .. } => {
                out.write_all(t.as_bytes())?;
                out.flush()?;
            }
            Event::ToolCall { .. } | Event::ToolArguments { .. } => {}
            Event::Done { usage, finish } => {
                writeln!(out)?;
                out.flush()?;
                let prompt_tps = usage.prompt_tokens.saturating_sub(usage.cached_tokens) as f64 / usage.prompt_secs.max(1e-9);
                let decode_tps = usage.completion_tokens.saturating_sub(1) as f64 / usage.decode_secs.max(1e-9);
                if a.stats_json {
                    let stats = serde_json::json!({
                        "load_secs": load_secs,
                        "prompt_tokens": usage.prompt_tokens,
                        "prompt_secs": usage.prompt_secs,
                        "prompt_tokens_per_sec": prompt_tps,
                        "completion_tokens": usage.completion_tokens,
                        "decode_secs": usage.decode_secs,
                        "decode_tokens_per_sec": decode_tps,
                    });
                    eprintln!("{stats}");
                }
                if a.stats {
                    eprintln!(
                        "load: {load_secs:.2}s; prompt: {} tokens ({} cached) in {:.2}s, {:.1} tok/s; generated: {} tokens in {:.2}s, {:.1} tok/s; finish: {:?}",
                        usage.prompt_tokens, usage.cached_tokens, usage.prompt_secs, prompt_tps, usage.completion_tokens, usage.decode_secs, decode_tps, finish
                    );
                }
                return Ok(());
            }
            Event::Error(e) => bail!("generation failed: {e}"),
        }
    }
    bail!("the engine stopped before finishing")
}

fn human_size(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 1024.0 { format!("{:.1} GiB", mib / 1024.0) } else { format!("{mib:.0} MiB") }
}
