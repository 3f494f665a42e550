//! The one Atoll binary. By argv[0] it is also the in-sandbox daemon
//! (`atoll-daemon`) and the sandbox init helper (`atoll-sandbox-init`), so a
//! single static file is all a host needs.

mod cli;
mod cli_stream;
mod cli_upload;
mod host;
mod mcp;
mod progress;
mod runner;
mod serve;
mod style;
mod tenancy;
mod tls;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "atoll",
    version,
    about = "Self-hostable, Daytona-compatible sandboxes for AI-generated code"
)]
struct Cli {
    /// No colour in output (also NO_COLOR=1, or TERM=dumb).
    #[arg(long, global = true)]
    no_color: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server with a local runner.
    Serve(Box<serve::ServeArgs>),
    /// Run a runner: a compute host of a deployment whose control plane
    /// is `atoll serve` elsewhere (register it with `POST /api/runners`).
    Runner(Box<runner::RunnerArgs>),
    /// Save the server URL and API key for the commands below (checked
    /// against the server first).
    ///
    /// Example: atoll login --api-url http://127.0.0.1:3000/api --api-key atl_…
    Login(cli::Endpoint),
    /// Forget the saved server URL and API key.
    Logout,
    /// Print the version.
    Version,
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    ///
    /// Example: atoll completion bash > /etc/bash_completion.d/atoll
    Completion { shell: clap_complete::Shell },
    /// Sandboxes: create, list, info, start, stop, delete.
    Sandbox {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        command: cli::SandboxCommand,
    },
    /// Snapshots: create (from a registry image), push (a local image
    /// archive), list, delete.
    Snapshot {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        command: cli::SnapshotCommand,
    },
    /// API keys of your organization: list, current, create, delete.
    Key {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        command: cli::KeyCommand,
    },
    /// Organizations: list, get, create (admin).
    Org {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        command: cli::OrgCommand,
    },
    /// Copy a file into or out of a sandbox.
    ///
    /// Example: atoll cp ./data.csv my-sandbox:/home/daytona/data.csv
    Cp {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        from: String,
        to: String,
    },
    /// The preview URL (and token) of a port of a sandbox.
    PreviewUrl {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        sandbox: String,
        port: u16,
    },
    /// Volumes: create, list, get, delete.
    Volume {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        command: cli::VolumeCommand,
    },
    /// Run a command in a sandbox; exits with the command's exit code.
    ///
    /// Example: atoll exec my-sandbox -- python3 -c 'print(6*7)'
    Exec {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        /// The sandbox (id or name).
        sandbox: String,
        /// Working directory inside the sandbox.
        #[arg(long)]
        cwd: Option<String>,
        /// Seconds before the command is stopped.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Run it on a terminal (raw keystrokes, window size followed),
        /// as `ssh -t` and `docker exec -t` do.
        #[arg(short = 't', long)]
        tty: bool,
        /// Pass this process's stdin to the command.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// A sandbox's logs: its entrypoint's output (as `docker logs`), the
    /// build of its image (`--build`), or one session command's.
    ///
    /// Example: atoll logs my-sandbox -f
    /// Example: atoll logs my-sandbox --session web --command 3f2a… -f
    Logs {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        /// The sandbox (id or name).
        sandbox: String,
        /// Keep streaming until the command (or build) ends.
        #[arg(short = 'f', long)]
        follow: bool,
        /// The log of the image build or pull the sandbox waited for.
        #[arg(long, conflicts_with_all = ["session", "command"])]
        build: bool,
        /// A session id (with --command).
        #[arg(long, requires = "command")]
        session: Option<String>,
        /// A command id of that session.
        #[arg(long, requires = "session")]
        command: Option<String>,
    },
    /// The Model Context Protocol server agents (Claude Desktop, Cursor,
    /// Windsurf) drive sandboxes through.
    Mcp {
        #[command(flatten)]
        endpoint: cli::Endpoint,
        #[command(subcommand)]
        command: McpCommand,
    },
    /// Manage images (Daytona "snapshots").
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand)]
enum McpCommand {
    /// Serve MCP on stdin/stdout, or with --http over streamable HTTP.
    ///
    /// Example: atoll mcp start --http 127.0.0.1:8765   (then http://127.0.0.1:8765/mcp)
    Start {
        /// Serve streamable HTTP on this address (path /mcp) instead of
        /// stdio. Only loopback Host names are accepted unless
        /// ATOLL_MCP_ALLOWED_HOSTS lists others.
        #[arg(long)]
        http: Option<String>,
    },
    /// Print the JSON an MCP client's config takes.
    Config,
    /// Add atoll to an MCP client's config file: claude, cursor or windsurf.
    Init { client: String },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the default image if it is missing.
    BuildDefault {
        /// Image store directory.
        #[arg(
            long,
            env = "ATOLL_IMAGES_DIR",
            default_value = "/var/lib/atoll/images"
        )]
        images_dir: PathBuf,
    },
    /// Pull an image from its registry into the image store (a runner
    /// pulls on demand; this pre-pulls, or measures a pull).
    Pull {
        /// The reference (`python:3.12-slim`, `host:5000/app@sha256:…`).
        reference: String,
        /// The name to store it under (default: the reference as given).
        #[arg(long)]
        name: Option<String>,
        /// Image store directory.
        #[arg(
            long,
            env = "ATOLL_IMAGES_DIR",
            default_value = "/var/lib/atoll/images"
        )]
        images_dir: PathBuf,
        /// Registry credentials (`user:password`); also ATOLL_REGISTRY_AUTH.
        #[arg(long, env = "ATOLL_REGISTRY_AUTH", hide_env_values = true)]
        auth: Option<String>,
        /// `REGISTRY=MIRROR`, repeatable.
        #[arg(long = "registry-mirror", value_delimiter = ',')]
        registry_mirrors: Vec<String>,
        /// A registry reached without TLS verification or over HTTP.
        #[arg(long = "insecure-registry", value_delimiter = ',')]
        insecure_registries: Vec<String>,
    },
}

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    match name {
        "atoll-daemon" => atoll_daemon::main_entry(),
        "atoll-sandbox-init" => atoll_runner::init::init_main(),
        _ => {}
    }
    // Colour off before parsing, so even a usage error is plain (clap
    // itself is built without colour).
    if style::disabled_by(std::env::args_os()) {
        style::disable();
    }
    let cli = Cli::parse();
    if cli.no_color {
        style::disable();
    }
    let result = match cli.command {
        Command::Image {
            command:
                ImageCommand::Pull {
                    reference,
                    name,
                    images_dir,
                    auth,
                    registry_mirrors,
                    insecure_registries,
                },
        } => {
            serve::init_logging();
            host::pull_image(host::PullArgs {
                name: name.unwrap_or_else(|| reference.clone()),
                reference,
                images_dir,
                auth,
                registry_mirrors,
                insecure_registries,
            })
        }
        Command::Login(e) => cli::login(e),
        Command::Logout => cli::logout(),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "atoll", &mut script);
            use std::io::Write;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(&script);
            Ok(())
        }
        Command::Version => {
            println!("atoll {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Sandbox { endpoint, command } => cli::sandbox(endpoint, command),
        Command::Volume { endpoint, command } => cli::volume(endpoint, command),
        Command::Snapshot { endpoint, command } => cli::snapshot(endpoint, command),
        Command::Cp { endpoint, from, to } => cli::cp(endpoint, from, to),
        Command::Key { endpoint, command } => cli::key(endpoint, command),
        Command::Org { endpoint, command } => cli::org(endpoint, command),
        Command::PreviewUrl {
            endpoint,
            sandbox,
            port,
        } => cli::preview_url(endpoint, sandbox, port),
        Command::Exec {
            endpoint,
            sandbox,
            cwd,
            timeout,
            tty,
            interactive,
            command,
        } => match cli::exec(
            endpoint,
            sandbox,
            cwd,
            timeout,
            cli::ExecMode { tty, interactive },
            command,
        ) {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
        Command::Logs {
            endpoint,
            sandbox,
            follow,
            build,
            session,
            command,
        } => {
            let source = match (build, session, command) {
                (true, _, _) => cli::LogSource::Build,
                (false, Some(session), Some(command)) => {
                    cli::LogSource::Command { session, command }
                }
                _ => cli::LogSource::Entrypoint,
            };
            cli::logs(endpoint, sandbox, source, follow)
        }
        Command::Mcp { endpoint, command } => match command {
            McpCommand::Start { http } => mcp::start(endpoint, http),
            McpCommand::Config => mcp::config(endpoint),
            McpCommand::Init { client } => mcp::init(endpoint, &client),
        },
        Command::Serve(args) => serve::run(*args),
        Command::Runner(args) => runner::run(*args),
        Command::Image {
            command: ImageCommand::BuildDefault { images_dir },
        } => {
            serve::init_logging();
            serve::ensure_default_image(&images_dir).map(|img| {
                println!("{} {} ({} MiB)", img.name, img.digest, img.size_bytes >> 20);
            })
        }
    };
    if let Err(e) = result {
        eprintln!(
            "{} {e:#}",
            style::paint(style::Stream::Stderr, style::RED, "atoll:")
        );
        std::process::exit(1);
    }
}
