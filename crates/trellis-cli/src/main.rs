//! `trellis`: the one binary of the mesh. Subcommands run the proxy and the control plane,
//! set up transparent capture, check configuration files, and manage resources through the
//! control plane's API.

mod ca;
mod check;
mod client;
mod demo;
mod observe;
mod resources;

use anyhow::Context;
use clap::{Parser, Subcommand};
use resources::Output;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "trellis",
    version,
    about = "Trellis service mesh",
    propagate_version = true,
    after_help = "Examples:\n  trellis proxy -c sidecar.yaml\n  trellis validate -f reviews.yaml\n  trellis control --data-dir ./trellis-data\n  trellis apply -f reviews.yaml"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: client::Connection,
}

#[derive(Subcommand)]
enum Command {
    /// Run a proxy from a static configuration file.
    #[command(after_help = "Example:\n  trellis proxy --config sidecar.yaml\n\n\
        The file holds a `kind: Proxy` document (listeners, admin address) and the `kind: Service`\n\
        and `kind: Endpoints` documents of the services this proxy talks to. Edit it, or send\n\
        SIGHUP, to reload without dropping requests; SIGTERM drains and exits.")]
    Proxy {
        /// The configuration file (YAML or JSON, several documents).
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
    },
    /// Install or remove the iptables rules that route a workload's traffic through its
    /// proxy. Run it inside the workload's network namespace, as root.
    #[command(
        after_help = "Example:\n  ip netns exec app trellis capture install --inbound-port 15006 --outbound-port 15001\n  ip netns exec app trellis capture remove"
    )]
    Capture {
        #[command(subcommand)]
        action: CaptureAction,
    },
    /// Check configuration files and print the problems found, with file, line and field.
    #[command(after_help = "Example:\n  trellis validate -f reviews.yaml")]
    Validate {
        #[arg(long, short = 'f', required = true)]
        file: Vec<PathBuf>,
    },
    /// Run the control plane: resource store, API, workload registry, certificate authority
    /// and config push.
    #[command(after_help = "Example:\n  trellis control --data-dir /var/lib/trellis --listen 127.0.0.1:7070\n  \
        trellis control --trust-domain prod.example.com --ca-cert ca.pem --ca-key ca.key\n\n\
        At first start it creates an admin token and prints where it wrote it, and (without\n\
        --ca-cert) a root CA kept in the data directory.")]
    Control(ControlArgs),
    /// Create or update resources from files (several documents per file).
    #[command(
        after_help = "Example:\n  trellis apply -f examples/canary.yaml\n  trellis apply -f reviews.yaml --dry-run"
    )]
    Apply {
        #[arg(long, short = 'f', required = true)]
        file: Vec<PathBuf>,
        /// Validate and show what would change, without changing anything.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// List resources of a kind, or show one (`KIND/NAME`); also `proxies` and
    /// `endpoints/SERVICE`.
    #[command(
        after_help = "Example:\n  trellis get services -n shop\n  trellis get service/reviews -n shop -o yaml\n  trellis get endpoints/reviews -n shop\n  trellis get proxies"
    )]
    Get {
        what: String,
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Delete a resource (its history is kept).
    #[command(after_help = "Example:\n  trellis delete service/reviews -n shop")]
    Delete {
        target: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// Show every generation of a resource.
    #[command(after_help = "Example:\n  trellis history service/reviews -n shop")]
    History {
        target: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Make an earlier generation of a resource current again.
    #[command(after_help = "Example:\n  trellis rollback service/reviews -n shop --to 3")]
    Rollback {
        target: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        #[arg(long)]
        to: u64,
    },
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  trellis completions bash > /etc/bash_completion.d/trellis")]
    Completions { shell: clap_complete::Shell },
    /// Manage API tokens and proxies' join tokens.
    #[command(after_help = "Example:\n  trellis token create alice --role service-owner --namespace shop\n  \
        trellis token create web-1 --role join --namespace shop --service-account web --ttl 1h --single-use")]
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Golden metrics per service (or route, or subset): meshed proxies, success rate,
    /// requests per second, latency percentiles over a window.
    #[command(
        after_help = "Example:\n  trellis stat\n  trellis stat reviews -n shop --by subset --window 1m\n  trellis stat --by route -o json\n\n\
        A service's row comes from its own proxies (inbound) when it has any, else from its\n\
        callers' proxies. Routes and subsets are chosen by callers, so --by route|subset shows\n\
        the callers' view. Proxies report every 5 s; windows reach back 15 minutes."
    )]
    Stat(observe::StatArgs),
    /// The busiest routes, refreshed live.
    #[command(
        after_help = "Example:\n  trellis top\n  trellis top -n shop --interval 5\n  trellis top -o json   # once, as JSON"
    )]
    Top {
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[arg(long, short = 'w', default_value = "10s")]
        window: String,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2)]
        interval: u64,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Who calls whom, at what rate and success rate, with which mTLS identities.
    #[command(after_help = "Example:\n  trellis edges\n  trellis edges -n shop -o json")]
    Edges {
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[arg(long, short = 'w', default_value = "30s")]
        window: String,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Stream live requests to or from a service: method, path, status, latency, identities.
    #[command(
        after_help = "Example:\n  trellis tap reviews\n  trellis tap reviews.shop --method POST --path-prefix /api --min-status 500\n  \
        trellis tap web --max 20 -o json"
    )]
    Tap(observe::TapArgs),
    /// Print the web dashboard's address (service graph, golden metrics, live tap, history).
    #[command(
        after_help = "Example:\n  trellis dashboard --token-file ./trellis-data/admin.token\n  trellis dashboard --open\n\n\
        The address carries your token after `#`, which the browser keeps to itself; the\n\
        dashboard is served by the control plane and needs nothing from the internet."
    )]
    Dashboard {
        /// Open it in the default browser.
        #[arg(long)]
        open: bool,
    },
    /// Run the whole mesh on this machine: control plane, a five-service demo shop with
    /// sidecars and identities, traffic, and the dashboard. Ctrl-C stops it all.
    #[command(
        after_help = "Example:\n  trellis demo\n  trellis demo --open --rate 20\n  trellis demo down      # from another terminal\n\n\
        Everything runs on 127.0.0.1 on free ports, with its state in one temporary directory\n\
        that is removed when the demo stops."
    )]
    Demo {
        #[command(subcommand)]
        action: Option<DemoAction>,
        /// Requests per second the traffic generator sends to the shop's front page.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Open the dashboard in the default browser.
        #[arg(long)]
        open: bool,
        /// Stop by itself after this long (e.g. 2m); without it, runs until Ctrl-C.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// No terminal needed: print the summary as one JSON line (server, tokenFile,
        /// dashboard, shop, stateDir) for scripts.
        #[arg(long)]
        headless: bool,
    },
    /// Check this machine and a running mesh, and say how to fix what is wrong: control
    /// plane reachable, token accepted, clocks in step, CA roots valid, every proxy
    /// connected, ready, in sync, with a valid certificate.
    #[command(after_help = "Example:\n  trellis check\n  trellis check --expiry-warning 1h -o json\n\n\
        Exits non-zero when a check fails; warnings alone do not.")]
    Check {
        /// Warn about proxy certificates that expire sooner than this.
        #[arg(long, value_parser = parse_duration, default_value = "10m")]
        expiry_warning: std::time::Duration,
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// One service of the demo shop (started by `trellis demo`).
    #[command(hide = true)]
    DemoApp {
        role: String,
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// SERVICE=URL of the sidecar listener for a called service.
        #[arg(long = "call")]
        calls: Vec<String>,
    },
    /// Inspect the mesh's certificate authority and rotate its root.
    #[command(after_help = "Example:\n  trellis ca status\n  trellis ca rotate\n  \
        trellis ca add-root && trellis ca activate FINGERPRINT && trellis ca retire OLD-FINGERPRINT")]
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
}

#[derive(clap::Args)]
struct ControlArgs {
    /// Where the store (one file), tokens, registry and CA live.
    #[arg(long, default_value = "./trellis-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: std::net::SocketAddr,
    /// Where proxies open their configuration streams and get certificates (gRPC).
    #[arg(long, default_value = "127.0.0.1:7071")]
    push_listen: std::net::SocketAddr,
    /// How long a proxy whose stream ended stays registered (its endpoints stay in use).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    registry_grace: std::time::Duration,
    /// The SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "trellis.local")]
    trust_domain: String,
    /// Lifetime of the certificates issued to proxies (at least 1m).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    svid_lifetime: std::time::Duration,
    /// Sign with this CA certificate (PEM; a root, or an intermediate with --ca-bundle)
    /// instead of a root kept in the data directory.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Certificates between --ca-cert and the root (PEM).
    #[arg(long, requires = "ca_cert")]
    ca_chain: Option<PathBuf>,
    /// The roots proxies trust (PEM); --ca-cert itself when unset.
    #[arg(long, requires = "ca_cert")]
    ca_bundle: Option<PathBuf>,
    /// Accept proxies that prove no identity (they get no certificate and no mTLS).
    #[arg(long)]
    allow_unauthenticated_proxies: bool,
}

#[derive(Subcommand)]
enum CaAction {
    /// The trust domain, the roots in the bundle and which one signs.
    Status {
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: Output,
    },
    /// Rotation step 1: add a new root to the bundle (trusted, not yet signing).
    AddRoot,
    /// Rotation step 2: the root signs from now on; proxies renew at once.
    Activate { fingerprint: String },
    /// Rotation step 3: remove a root that no longer signs from the bundle.
    Retire { fingerprint: String },
    /// All three steps, waiting after each until every connected proxy has caught up.
    Rotate {
        /// Give up waiting for proxies after this long.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token; it is printed once.
    #[command(after_help = "Example:\n  trellis token create alice --role service-owner --namespace shop")]
    Create {
        name: String,
        /// admin, service-owner, viewer, or join (a proxy's first certificate).
        #[arg(long)]
        role: String,
        /// For service-owner: the namespace it may change. For join: the workload's namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// For join: the service account the proxy's identity names.
        #[arg(long)]
        service_account: Option<String>,
        /// Refuse the token after this long (e.g. 10m, 24h).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Refuse the token after its first use.
        #[arg(long)]
        single_use: bool,
    },
}

#[derive(Subcommand)]
enum DemoAction {
    /// Stop a running demo (as Ctrl-C in its terminal would) and remove its state.
    #[command(after_help = "Example:\n  trellis demo down")]
    Down,
}

#[derive(Subcommand)]
enum CaptureAction {
    /// Install the rules (replacing earlier Trellis rules).
    #[command(
        after_help = "Example:\n  ip netns exec app trellis capture install --inbound-port 15006 --outbound-port 15001 --exclude-inbound-ports 22"
    )]
    Install {
        #[command(flatten)]
        rules: RuleArgs,
        /// Print the rules instead of installing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove every Trellis rule and chain.
    #[command(after_help = "Example:\n  ip netns exec app trellis capture remove")]
    Remove,
}

#[derive(clap::Args)]
struct RuleArgs {
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// The SO_MARK the proxy puts on its own connections (its `mark` setting); 0 disables.
    #[arg(long, default_value_t = 0x539)]
    proxy_mark: u32,
    /// The uid the proxy runs as; its traffic is not captured.
    #[arg(long)]
    proxy_uid: Option<u32>,
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// Inbound ports delivered straight to the application (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Capture only these inbound ports (default: all but the excluded).
    #[arg(long, value_delimiter = ',')]
    inbound_ports: Vec<u16>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TRELLIS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let conn = cli.connection.clone();
    match cli.command {
        Command::Control(args) => runtime()?.block_on(run_control(args)),
        Command::Ca { action } => runtime()?.block_on(ca::run(&conn, action)),
        Command::Apply { file, dry_run, output } => {
            runtime()?.block_on(resources::apply(&conn, &file, dry_run, output))
        }
        Command::Get { what, namespace, output } => {
            runtime()?.block_on(resources::get(&conn, &what, namespace.as_deref(), output))
        }
        Command::Delete { target, namespace } => runtime()?.block_on(resources::delete(&conn, &target, &namespace)),
        Command::History { target, namespace, output } => {
            runtime()?.block_on(resources::history(&conn, &target, &namespace, output))
        }
        Command::Rollback { target, namespace, to } => {
            runtime()?.block_on(resources::rollback(&conn, &target, &namespace, to))
        }
        Command::Token { action: TokenAction::Create { name, role, namespace, service_account, ttl, single_use } } => {
            let request = resources::TokenRequest {
                name: &name,
                role: &role,
                namespace: namespace.as_deref(),
                service_account: service_account.as_deref(),
                ttl,
                single_use,
            };
            runtime()?.block_on(resources::create_token(&conn, request))
        }
        Command::Proxy { config, workers } => trellis_proxy::run::runtime(workers.map(usize::from))?
            .block_on(trellis_proxy::run::serve_until_signalled(config)),
        Command::Stat(args) => runtime()?.block_on(observe::stat(&conn, args)),
        Command::Top { namespace, window, interval, output } => runtime()?.block_on(observe::top(
            &conn,
            namespace,
            window,
            std::time::Duration::from_secs(interval.max(1)),
            output,
        )),
        Command::Edges { namespace, window, output } => {
            runtime()?.block_on(observe::edges(&conn, namespace, window, output))
        }
        Command::Tap(args) => runtime()?.block_on(observe::tap(&conn, args)),
        Command::Dashboard { open } => runtime()?.block_on(observe::dashboard(&conn, open)),
        Command::Check { expiry_warning, output } => runtime()?.block_on(check::run(&conn, expiry_warning, output)),
        Command::Demo { action: Some(DemoAction::Down), .. } => demo::down(),
        Command::Demo { action: None, rate, open, duration, headless } => {
            runtime()?.block_on(demo::run(demo::DemoArgs { rate, open, duration, headless }))
        }
        Command::DemoApp { role, listen, calls } => {
            let role = trellis_demo::Role::parse(&role)?;
            let mut upstreams = std::collections::BTreeMap::new();
            for call in calls {
                let (service, url) = call.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--call `{call}`: write SERVICE=URL, e.g. catalog=http://127.0.0.1:9000")
                })?;
                upstreams.insert(service.to_string(), url.to_string());
            }
            runtime()?.block_on(trellis_demo::serve(role, listen, upstreams))
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "trellis", &mut std::io::stdout());
            Ok(())
        }
        Command::Capture { action: CaptureAction::Install { rules, dry_run } } => {
            let rules = trellis_proxy::capture::CaptureRules {
                inbound_port: rules.inbound_port,
                outbound_port: rules.outbound_port,
                proxy_mark: rules.proxy_mark,
                proxy_uid: rules.proxy_uid,
                proxy_gid: rules.proxy_gid,
                exclude_inbound_ports: rules.exclude_inbound_ports,
                exclude_outbound_ports: rules.exclude_outbound_ports,
                include_inbound_ports: rules.inbound_ports,
            };
            if dry_run {
                print!("{}", rules.iptables_restore());
                return Ok(());
            }
            rules.install().context("installing capture rules")?;
            println!("capture installed: inbound → :{}, outbound → :{}", rules.inbound_port, rules.outbound_port);
            Ok(())
        }
        Command::Capture { action: CaptureAction::Remove } => {
            trellis_proxy::capture::uninstall()?;
            println!("capture removed");
            Ok(())
        }
        Command::Validate { file } => {
            let mut failed = false;
            for path in file {
                match trellis_api::parse_file(&path) {
                    Ok(docs) => println!("{}: {} document(s) valid", path.display(), docs.len()),
                    Err(errors) => {
                        failed = true;
                        println!("{errors}");
                    }
                }
            }
            if failed {
                anyhow::bail!("configuration has errors");
            }
            Ok(())
        }
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<trellis_api::Duration>().map(|d| d.get())
}

async fn run_control(args: ControlArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use tokio::signal::unix::{SignalKind, signal};
    let (data_dir, listen, push_listen) = (args.data_dir.clone(), args.listen, args.push_listen);
    if args.svid_lifetime < std::time::Duration::from_secs(60) {
        anyhow::bail!("--svid-lifetime must be at least 1m (proxies renew at half-life)");
    }
    trellis_identity::SpiffeId::new(&args.trust_domain, "ns", "sa").map_err(|_| {
        anyhow::anyhow!(
            "--trust-domain `{}` is not a valid trust domain: use lowercase letters, digits, `-`, `.`",
            args.trust_domain
        )
    })?;
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let store = trellis_control::store::Store::open(&data_dir)?;
    let (tokens, admin_file) = trellis_control::auth::Tokens::open(&data_dir)?;
    let tokens = Arc::new(tokens);
    let provided = args.ca_cert.clone().zip(args.ca_key.clone()).map(|(cert, key)| trellis_control::ca::ProvidedCa {
        cert,
        key,
        chain: args.ca_chain.clone(),
        bundle: args.ca_bundle.clone(),
    });
    let ca = Arc::new(trellis_control::ca::CertificateAuthority::open(
        &data_dir,
        trellis_control::ca::CaSettings {
            trust_domain: args.trust_domain.clone(),
            svid_lifetime: args.svid_lifetime,
            provided,
        },
    )?);
    if let Some(file) = admin_file {
        println!("admin token written to {}", file.display());
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the control-plane API"))?;
    let registry = Arc::new(trellis_control::registry::Registry::open(&data_dir, args.registry_grace));
    let snapshots = trellis_control::push::spawn_snapshot_builder(store.clone(), registry.clone(), ca.clone());
    let push_socket = tokio::net::TcpListener::bind(push_listen)
        .await
        .with_context(|| format!("cannot listen on {push_listen} for proxy streams"))?;
    println!("proxy streams on http://{}", push_socket.local_addr()?);
    let telemetry = Arc::new(trellis_control::telemetry::TelemetryStore::default());
    let taps = Arc::new(trellis_control::telemetry::tap::TapHub::default());
    let push = trellis_control::push::PushService::new(
        registry.clone(),
        telemetry.clone(),
        taps.clone(),
        snapshots.clone(),
        ca.clone(),
        args.allow_unauthenticated_proxies,
    );
    let identity = trellis_control::identity::IdentityService::new(ca.clone(), tokens.clone());
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(push_socket);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(push)
            .add_service(identity)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!("proxy stream server stopped: {e}");
        }
    });
    println!("control plane listening on http://{}", listener.local_addr()?);
    let control =
        Arc::new(trellis_control::api::ControlPlane { store, tokens, registry, snapshots, ca, telemetry, taps });
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    axum::serve(listener, trellis_control::api::router(control))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
        .await?;
    Ok(())
}
