//! The `rbee` command.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rbee_engine::store::{Progress, ProgressFn};
use rbee_engine::{Config, Engine, Event, Message, Prompt, Request, SamplingParams};

#[derive(Parser)]
#[command(name = "rbee", version, about = "Run LLMs on the machines your office already has")]
struct Cli {
    /// Where models and the catalog live.
    #[arg(long, global = true, env = "RBEE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
        endpoint: String,
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
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
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

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("rbee");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/rbee")
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let data_dir = cli.data_dir.unwrap_or_else(default_data_dir);
    match cli.command {
        Command::Models { command } => models(&data_dir, command),
        Command::Generate(args) => generate(&data_dir, args),
        Command::Hw => {
            println!("{}", serde_json_pretty(&rbee_engine::hardware::probe()));
            Ok(())
        }
    }
}

fn serde_json_pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn open_engine(data_dir: &Path, slots: usize) -> Result<Engine> {
    let mut cfg = Config::new(data_dir.to_path_buf());
    cfg.slots = slots;
    let engine = Engine::new(cfg).with_context(|| format!("opening the model store in {}", data_dir.display()))?;
    for w in engine.store().warnings() {
        eprintln!("warning: {w}");
    }
    Ok(engine)
}

fn progress_bar(msg: &str) -> (ProgressBar, ProgressFn) {
    let bar = ProgressBar::new(0).with_message(msg.to_string());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
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

fn models(data_dir: &Path, command: ModelsCommand) -> Result<()> {
    let engine = open_engine(data_dir, 1)?;
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

fn generate(data_dir: &Path, a: GenerateArgs) -> Result<()> {
    let engine = open_engine(data_dir, 1)?;
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
            Event::Text(t) => {
                out.write_all(t.as_bytes())?;
                out.flush()?;
            }
            Event::Done { usage, finish } => {
                writeln!(out)?;
                let prompt_tps = (usage.prompt_tokens - usage.cached_tokens) as f64 / usage.prompt_secs.max(1e-9);
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
                        usage.prompt_tokens,
                        usage.cached_tokens,
                        usage.prompt_secs,
                        prompt_tps,
                        usage.completion_tokens,
                        usage.decode_secs,
                        decode_tps,
                        finish
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
