//! `xki-proxy`: the XKS proxy server and its admin commands.

/// See Cargo.toml: a faster allocator for the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use xki_proxy::discover::{self, Found};
use xki_proxy::hsm::{Date, Usage};
use xki_proxy::{admin, credentials, demo, server};

#[derive(Parser)]
#[command(
    name = "xki-proxy",
    version,
    about = "XKS Proxy API v1 server over any PKCS#11 module",
    long_about = "XKS Proxy API v1 server over any PKCS#11 module.\n\n\
        Without a subcommand it serves. Config: --config, $XKI_PROXY_CONF, \
        ~/.config/xki/proxy.toml, /etc/xki/proxy.toml; with none of them, the first run \
        creates a LOCAL DEMO (plain HTTP on 127.0.0.1:8000, embedded software token) and \
        prints how to call it."
)]
struct Cli {
    /// Config file (default: see above).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// Listen on this address instead of the config's `listen` (e.g. 127.0.0.1:0).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Manage HYOK keys in the HSM.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Mint SigV4 credentials.
    #[command(subcommand)]
    Credentials(CredCmd),
    /// Certificates for trying HTTPS and mTLS (test only).
    #[command(subcommand)]
    Tls(TlsCmd),
    /// Run the deep health check once and print the result.
    Health,
    /// Ask the running server (pid_file) to reload credentials, allow-lists and rules.
    Reload,
    /// Load-test a running proxy with signed requests.
    Bench(xki_proxy::bench::BenchArgs),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Open the token, creating a new embedded store the module config names if it does not
    /// exist yet (other commands never create one: a missing store is an error).
    Init,
    /// Generate an AES-256 key in the HSM; prints the External Key ID.
    Create {
        /// External key id (CKA_LABEL).
        #[arg(long)]
        label: String,
        /// Usage: encrypt, decrypt or both.
        #[arg(long, value_enum, default_value = "both")]
        usage: Usage,
    },
    /// List keys: id, state, usage, deletion date.
    List,
    /// Enable a key (sets CKA_ENCRYPT/CKA_DECRYPT per --usage).
    Enable {
        /// External key id.
        id: String,
        /// Usage to restore.
        #[arg(long, value_enum, default_value = "both")]
        usage: Usage,
    },
    /// Disable a key (clears CKA_ENCRYPT and CKA_DECRYPT).
    Disable {
        /// External key id.
        id: String,
    },
    /// Disable a key and schedule its deletion in N days (7-30).
    ScheduleDeletion {
        /// External key id.
        id: String,
        /// Days until deletion.
        #[arg(long)]
        days: u32,
    },
    /// Cancel a scheduled deletion (the key stays disabled).
    CancelDeletion {
        /// External key id.
        id: String,
    },
    /// Destroy keys whose deletion date has passed.
    Purge {
        /// Pretend today is this date (YYYY-MM-DD); for tests and drills.
        #[arg(long, hide = true)]
        as_of: Option<String>,
    },
}

#[derive(Subcommand)]
enum TlsCmd {
    /// NOT FOR PRODUCTION: a throwaway test CA, server and client certificate in --dir.
    SelfSigned {
        /// Directory to write ca.pem, server.pem/.key, client.pem/.key into (never overwrites).
        #[arg(long)]
        dir: PathBuf,
        /// Extra server name (DNS name or IP address; localhost and 127.0.0.1 are always in).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Subject CN of the client certificate.
        #[arg(long, default_value = xki_proxy::test_pki::DEFAULT_CLIENT_NAME)]
        client_name: String,
    },
}

#[derive(Subcommand)]
enum CredCmd {
    /// New access key id + secret for a path prefix.
    New {
        /// URI path prefix ("" for none).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Secret file to write (0600); the console JSON goes to FILE.json.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_date(s: &str) -> Result<Date, String> {
    let p: Vec<&str> = s.split('-').collect();
    match p.as_slice() {
        [y, m, d] => Ok(Date {
            y: y.parse().map_err(|_| "bad year")?,
            m: m.parse().map_err(|_| "bad month")?,
            d: d.parse().map_err(|_| "bad day")?,
        }),
        _ => Err(format!("{s}: expected YYYY-MM-DD")),
    }
}

/// `serve`: the configured server, or the local demo when there is no config at all.
fn serve(flag: Option<&std::path::Path>, args: ServeArgs) -> Result<(), String> {
    let opts = |demo| server::ServeOptions {
        listen: args.listen,
        demo,
    };
    match discover::locate(flag)? {
        Found::File(p) => server::serve(&p, opts(false)),
        Found::Demo(p) => server::serve(&p, opts(true)),
        Found::Nothing { .. } => {
            let p = demo::create()?;
            server::say(&format!(
                "xki-proxy: no config found; created a local demo setup in {}",
                p.display()
            ));
            server::serve(&p, opts(true))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flag = cli.config.as_deref();
    let cmd = match (cli.cmd, cli.serve.listen) {
        (None, _) => Cmd::Serve(cli.serve),
        (Some(Cmd::Serve(a)), top) => Cmd::Serve(ServeArgs {
            listen: a.listen.or(top),
        }),
        (Some(_), Some(_)) => {
            eprintln!("xki-proxy: --listen applies only to serve");
            return ExitCode::FAILURE;
        }
        (Some(c), None) => c,
    };
    let cfg = || discover::require(flag);
    let r = match cmd {
        Cmd::Serve(args) => serve(flag, args),
        Cmd::Credentials(CredCmd::New { prefix, out }) => {
            credentials::run_new(&prefix, out.as_deref())
        }
        Cmd::Bench(args) => xki_proxy::bench::run(args),
        Cmd::Tls(TlsCmd::SelfSigned {
            dir,
            names,
            client_name,
        }) => xki_proxy::test_pki::run(&dir, &names, &client_name),
        other => cfg().and_then(|c| admin_cmd(&c, other)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xki-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Commands that need an existing config.
fn admin_cmd(c: &std::path::Path, cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Keys(k) => match k {
            KeysCmd::Create { label, usage } => admin::create(c, &label, usage),
            KeysCmd::Init => admin::init(c),
            KeysCmd::List => admin::list(c),
            KeysCmd::Enable { id, usage } => admin::enable(c, &id, usage),
            KeysCmd::Disable { id } => admin::disable(c, &id),
            KeysCmd::ScheduleDeletion { id, days } => admin::schedule_deletion(c, &id, days),
            KeysCmd::CancelDeletion { id } => admin::cancel_deletion(c, &id),
            KeysCmd::Purge { as_of } => as_of
                .as_deref()
                .map(parse_date)
                .transpose()
                .and_then(|d| admin::purge(c, d)),
        },
        Cmd::Health => admin::health(c),
        Cmd::Reload => admin::reload(c),
        Cmd::Serve(_) | Cmd::Credentials(_) | Cmd::Bench(_) | Cmd::Tls(_) => {
            Err("internal error: command dispatched to the wrong handler".into())
        }
    }
}
