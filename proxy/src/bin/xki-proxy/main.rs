//! `xki-proxy`: the XKS proxy server and its admin commands.

/// See Cargo.toml: a faster allocator for the request path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident memory: mimalloc asks for transparent huge pages on its arenas (`MADV_HUGEPAGE`),
/// so the kernel backs every touched 2 MiB of heap with a whole huge page: 8-12 MB of the
/// proxy's ~30 MB resident at c=64 were huge-page slack (README: Performance). Turned off for
/// this process before its first allocation: a constructor (`.init_array`) runs before Rust's
/// runtime set-up and `main`, whose allocations would already fault in a huge page. The process
/// starts no other programs (the flag is inherited).
#[used]
#[link_section = ".init_array"]
static NO_TRANSPARENT_HUGE_PAGES: extern "C" fn() = no_transparent_huge_pages;

extern "C" fn no_transparent_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes integer arguments only and changes a flag of
    // this process; a kernel without it returns an error, which changes nothing.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod bench;

use clap::{Args, Parser, Subcommand};
use xki_proxy::discover::{self, Found};
#[cfg(feature = "fault-injection")]
use xki_proxy::hsm::Date;
use xki_proxy::hsm::Usage;
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
    /// Serve the admin listener (/metrics, /ping, /status) here instead of `admin_listen`.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
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
    /// Check the config, secrets, TLS files and the HSM (login, keys, canary round trip) and
    /// print what would be served; exits non-zero on any problem. Changes nothing.
    CheckConfig,
    /// Ask the running server (pid_file) to reload credentials, allow-lists and rules.
    Reload,
    /// Load-test a running proxy with signed requests.
    // Boxed: its many options would make every `Cmd` as large as it.
    Bench(Box<bench::BenchArgs>),
    /// The module's user-PIN attempt limit (`max_pin_attempts`).
    #[command(subcommand)]
    Pin(PinCmd),
}

#[derive(Subcommand)]
enum PinCmd {
    /// Unlock a slot locked by wrong PINs: its counter back to 0, recorded in the audit trail.
    Unlock {
        /// Label of the module's `[[slot]]`.
        #[arg(long)]
        slot: String,
        /// The module's config (default: $XKI_PKCS11_CONF, ~/.config/xki/pkcs11.toml,
        /// /etc/xki/pkcs11.toml, as the module finds it).
        #[arg(long)]
        module_config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Open the token, creating a new embedded store the module config names if it does not
    /// exist yet (other commands never create one: a missing store is an error).
    Init,
    /// Generate an AES-256 key in the HSM with its final usage; prints what the KMS console
    /// asks for (External Key ID, key spec, usage, status).
    Create {
        /// External key id (CKA_LABEL).
        #[arg(long)]
        label: String,
        /// Usage: encrypt, decrypt or both.
        #[arg(long, value_enum, default_value = "both")]
        usage: Usage,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keys: id, spec, state, usage, deletion date, notes.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Enable a key: restores the usage it had (or sets --usage).
    Enable {
        /// External key id.
        id: String,
        /// Usage to set instead of the one the key had.
        #[arg(long, value_enum)]
        usage: Option<Usage>,
    },
    /// Disable a key (the HSM refuses it; its usage is kept for `keys enable`).
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
        /// TEST BUILDS ONLY (`fault-injection` feature): pretend today is this date
        /// (YYYY-MM-DD). Absent from production builds, so no purge can run early.
        #[cfg(feature = "fault-injection")]
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
    /// List the configured credentials: access key id, prefix, created, secret file (never
    /// the secret).
    List,
}

#[cfg(feature = "fault-injection")]
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
        admin_listen: args.admin_listen,
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
    let top = cli.serve;
    let cmd = match cli.cmd {
        None => Cmd::Serve(top),
        Some(Cmd::Serve(a)) => Cmd::Serve(ServeArgs {
            listen: a.listen.or(top.listen),
            admin_listen: a.admin_listen.or(top.admin_listen),
        }),
        Some(_) if top.listen.is_some() || top.admin_listen.is_some() => {
            eprintln!("xki-proxy: --listen and --admin-listen apply only to serve");
            return ExitCode::FAILURE;
        }
        Some(c) => c,
    };
    let cfg = || discover::require(flag);
    let r = match cmd {
        Cmd::Serve(args) => serve(flag, args),
        Cmd::Credentials(CredCmd::New { prefix, out }) => {
            credentials::run_new(&prefix, out.as_deref())
        }
        Cmd::Bench(args) => bench::run(*args),
        Cmd::Tls(TlsCmd::SelfSigned {
            dir,
            names,
            client_name,
        }) => xki_proxy::test_pki::run(&dir, &names, &client_name),
        Cmd::Pin(PinCmd::Unlock {
            slot,
            module_config,
        }) => admin::pin_unlock(module_config.as_deref(), &slot),
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
            KeysCmd::Create { label, usage, json } => admin::create(c, &label, usage, json),
            KeysCmd::Init => admin::init(c),
            KeysCmd::List { json } => admin::list(c, json),
            KeysCmd::Enable { id, usage } => admin::enable(c, &id, usage),
            KeysCmd::Disable { id } => admin::disable(c, &id),
            KeysCmd::ScheduleDeletion { id, days } => admin::schedule_deletion(c, &id, days),
            KeysCmd::CancelDeletion { id } => admin::cancel_deletion(c, &id),
            #[cfg(feature = "fault-injection")]
            KeysCmd::Purge { as_of } => as_of
                .as_deref()
                .map(parse_date)
                .transpose()
                .and_then(|d| admin::purge(c, d)),
            #[cfg(not(feature = "fault-injection"))]
            KeysCmd::Purge {} => admin::purge(c, None),
        },
        Cmd::Health => admin::health(c),
        Cmd::CheckConfig => xki_proxy::check::run(c),
        Cmd::Credentials(CredCmd::List) => credentials::run_list(c),
        Cmd::Reload => admin::reload(c),
        Cmd::Serve(_)
        | Cmd::Credentials(CredCmd::New { .. })
        | Cmd::Bench(_)
        | Cmd::Tls(_)
        | Cmd::Pin(_) => Err("internal error: command dispatched to the wrong handler".into()),
    }
}
