//! What the demo runs: the workloads, their ports on loopback, and the documents that
//! describe them (the shop's services, each sidecar's `kind: Proxy`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use trellis_demo::Role;

pub const NAMESPACE: &str = "shop";

/// One instance of a demo service with its sidecar.
pub struct Workload {
    /// e.g. `reviews-v2`: the role, and the proxy's id.
    pub name: String,
    pub role: Role,
    pub role_name: String,
    /// Where the application listens (only its sidecar calls it).
    pub app: SocketAddr,
    /// The sidecar's inbound listener: the workload's address in the mesh.
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    /// Each called service and the sidecar's explicit listener for it.
    pub calls: Vec<(String, SocketAddr)>,
    pub token_file: PathBuf,
    pub proxy_config: PathBuf,
    state_dir: PathBuf,
}

pub struct Plan {
    pub api: SocketAddr,
    pub push: SocketAddr,
    pub workloads: Vec<Workload>,
}

/// Free loopback ports, all held open until every one is chosen so none repeats.
struct Ports(Vec<TcpListener>);

impl Ports {
    fn next(&mut self) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| anyhow::anyhow!("cannot find a free port on 127.0.0.1: {e}"))?;
        let addr = listener.local_addr()?;
        self.0.push(listener);
        Ok(addr)
    }
}

impl Plan {
    pub fn new(dir: &Path) -> anyhow::Result<Plan> {
        let mut ports = Ports(Vec::new());
        let (api, push) = (ports.next()?, ports.next()?);
        let mut workloads = Vec::new();
        for role_name in ["web", "catalog", "inventory", "reviews-v1", "reviews-v2", "reviews-v3", "ratings"] {
            let role = Role::parse(role_name)?;
            let mut calls = Vec::new();
            for service in role.calls() {
                calls.push((service.to_string(), ports.next()?));
            }
            workloads.push(Workload {
                name: role_name.to_string(),
                role,
                role_name: role_name.to_string(),
                app: ports.next()?,
                inbound: ports.next()?,
                admin: ports.next()?,
                calls,
                token_file: dir.join(format!("{role_name}.token")),
                proxy_config: dir.join(format!("{role_name}-proxy.yaml")),
                state_dir: dir.join(format!("{role_name}-state")),
            });
        }
        Ok(Plan { api, push, workloads })
    }

    /// Where the traffic enters: web's sidecar.
    pub fn web_inbound(&self) -> SocketAddr {
        self.workloads.iter().find(|w| w.role == Role::Web).map(|w| w.inbound).unwrap_or(self.api)
    }

    /// The shop's services. Reviews has three subsets by version; without routes, requests
    /// spread over all three.
    pub fn services_yaml(&self) -> String {
        format!(
            "kind: Service\nname: web\nnamespace: {NAMESPACE}\n---\n\
             kind: Service\nname: catalog\nnamespace: {NAMESPACE}\n---\n\
             kind: Service\nname: inventory\nnamespace: {NAMESPACE}\n---\n\
             kind: Service\nname: reviews\nnamespace: {NAMESPACE}\nsubsets: {{v1: {{version: v1}}, v2: {{version: v2}}, v3: {{version: v3}}}}\n---\n\
             kind: Service\nname: ratings\nnamespace: {NAMESPACE}\n"
        )
    }

    /// A sidecar's configuration: inbound to its application, an explicit listener per
    /// called service, the control plane, and the workload it registers.
    pub fn proxy_yaml(&self, w: &Workload) -> String {
        let explicit: Vec<String> = w
            .calls
            .iter()
            .map(|(service, addr)| format!("{{listen: '{addr}', service: {service}.{NAMESPACE}}}"))
            .collect();
        let calls: Vec<&str> = w.calls.iter().map(|(s, _)| s.as_str()).collect();
        let labels = match w.role {
            Role::Reviews { version } => format!("labels: {{version: v{version}}}, "),
            _ => String::new(),
        };
        format!(
            "kind: Proxy\nname: {name}\nadmin: '{admin}'\ndrainTimeout: 1s\n\
             inbound: {{listen: '{inbound}', forward: '{app}'}}\n\
             explicit: [{explicit}]\n\
             control: {{url: 'http://{push}', stateDir: '{state}', proxyId: {name}, joinTokenFile: '{token}'}}\n\
             workload: {{service: {service}, namespace: {NAMESPACE}, serviceAccount: {service}, {labels}address: '{inbound}', calls: [{calls}]}}\n",
            name = w.name,
            admin = w.admin,
            inbound = w.inbound,
            app = w.app,
            explicit = explicit.join(", "),
            push = self.push,
            state = w.state_dir.display(),
            token = w.token_file.display(),
            service = w.role.service(),
            calls = calls.join(", "),
        )
    }
}
