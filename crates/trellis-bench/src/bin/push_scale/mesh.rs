//! The synthetic mesh: `services` Services spread evenly over `namespaces` namespaces, each
//! with an Endpoints document of `endpoints_per_service` static endpoints, and which
//! simulated proxy runs next to which workload. The same generator writes the files the
//! script applies, the documents each measured change applies, and the documents the
//! in-process compiler timing loads, so all three describe one mesh.

use anyhow::{Context, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone, Debug)]
pub struct Mesh {
    /// Namespaces; services are spread evenly over them.
    #[arg(long, default_value_t = 10)]
    pub namespaces: usize,
    /// Services in the whole mesh (a multiple of --namespaces).
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Static endpoints in each service's Endpoints document.
    #[arg(long, default_value_t = 10)]
    pub endpoints_per_service: usize,
}

/// The part of a Service document a change modifies: the canary weight of the `api` route
/// and the value of a request header it sets (unique per change, so every change is a real
/// update and the simulator can recognise it in what it receives).
#[derive(Clone, Debug)]
pub struct Variant {
    pub weight_v2: u32,
    pub marker: String,
}

impl Variant {
    pub fn initial() -> Self {
        Variant { weight_v2: 10, marker: "initial".into() }
    }
}

impl Mesh {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.namespaces == 0 || self.services == 0 || !self.services.is_multiple_of(self.namespaces) {
            bail!("--services ({}) must be a positive multiple of --namespaces ({})", self.services, self.namespaces);
        }
        if self.namespaces > 100 || self.per_namespace() > 1000 || self.services > 60_000 {
            bail!("at most 100 namespaces of at most 1000 services each, 60,000 services in all");
        }
        if self.endpoints_per_service == 0 || self.endpoints_per_service > 250 {
            bail!("--endpoints-per-service must be 1 to 250");
        }
        Ok(())
    }

    pub fn per_namespace(&self) -> usize {
        self.services / self.namespaces
    }

    pub fn namespace(&self, ns: usize) -> String {
        format!("ns-{ns:02}")
    }

    pub fn service(&self, index: usize) -> String {
        format!("svc-{index:03}")
    }

    /// The name a proxy sees for a resource: `KIND/NAMESPACE/NAME`.
    pub fn service_key(&self, ns: usize, index: usize) -> String {
        format!("Service/{}/{}", self.namespace(ns), self.service(index))
    }

    /// Resources a proxy whose workload is in a namespace (calling all of it) holds.
    pub fn resources_per_proxy(&self) -> usize {
        2 * self.per_namespace()
    }

    pub fn service_yaml(&self, ns: usize, index: usize, v: &Variant) -> String {
        format!(
            "kind: Service\n\
             name: {name}\n\
             namespace: {namespace}\n\
             subsets: {{v1: {{version: v1}}, v2: {{version: v2}}}}\n\
             routes:\n\
             \x20 - name: api\n\
             \x20   match: {{path: {{prefix: /api/}}}}\n\
             \x20   timeout: 2s\n\
             \x20   retries: {{attempts: 2, on: [connect-failure, reset, gateway-error]}}\n\
             \x20   requestHeaders: {{set: {{x-bench-change: '{marker}'}}}}\n\
             \x20   to: [{{subset: v1, weight: {w1}}}, {{subset: v2, weight: {w2}}}]\n\
             \x20 - name: rest\n\
             \x20   timeout: 5s\n",
            name = self.service(index),
            namespace = self.namespace(ns),
            marker = v.marker,
            w1 = 100 - v.weight_v2,
            w2 = v.weight_v2,
        )
    }

    pub fn endpoints_yaml(&self, ns: usize, index: usize) -> String {
        let mut out = format!(
            "kind: Endpoints\nservice: {}\nnamespace: {}\nendpoints:\n",
            self.service(index),
            self.namespace(ns)
        );
        let global = ns * self.per_namespace() + index;
        for e in 0..self.endpoints_per_service {
            // 10.x.y.z, unique over the mesh (at most 60,000 services × 250 endpoints < 2^24).
            let n = global * 256 + e + 1;
            let version = if e % 2 == 0 { "v1" } else { "v2" };
            let _ = writeln!(
                out,
                "  - {{address: '10.{}.{}.{}:8080', labels: {{version: {version}, zone: zone-{}}}}}",
                (n >> 16) & 0xff,
                (n >> 8) & 0xff,
                n & 0xff,
                e % 3
            );
        }
        out
    }

    /// Every Service and its Endpoints, in `files` files of about equal size (multi-document
    /// YAML; each Service directly followed by its Endpoints). Returns the paths in order.
    pub fn write_files(&self, dir: &Path, files: usize) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = files.clamp(1, self.services);
        let per_file = self.services.div_ceil(files);
        let mut paths = Vec::new();
        let mut text = String::new();
        let mut in_file = 0;
        let flush = |text: &mut String, paths: &mut Vec<PathBuf>| -> anyhow::Result<()> {
            let path = dir.join(format!("mesh-{:02}.yaml", paths.len() + 1));
            // The API reads a request body of at most 2 MiB (axum's default limit).
            if text.len() > 2 * 1024 * 1024 - 4096 {
                bail!(
                    "{} would be {} bytes, over the API's 2 MiB request limit: use more --files",
                    path.display(),
                    text.len()
                );
            }
            std::fs::write(&path, &*text).with_context(|| format!("writing {}", path.display()))?;
            paths.push(path);
            text.clear();
            Ok(())
        };
        for ns in 0..self.namespaces {
            for index in 0..self.per_namespace() {
                if !text.is_empty() {
                    text.push_str("---\n");
                }
                text.push_str(&self.service_yaml(ns, index, &Variant::initial()));
                text.push_str("---\n");
                text.push_str(&self.endpoints_yaml(ns, index));
                in_file += 1;
                if in_file == per_file {
                    flush(&mut text, &mut paths)?;
                    in_file = 0;
                }
            }
        }
        if !text.is_empty() {
            flush(&mut text, &mut paths)?;
        }
        Ok(paths)
    }
}

/// The simulated proxies: proxy `p` runs next to a workload in namespace `p % namespaces`, of
/// service `(p / namespaces) % per_namespace` (so the first services of every namespace get
/// one registered instance each), and calls nothing explicitly, so it receives its whole
/// namespace.
#[derive(Clone, Debug)]
pub struct ProxyPlan {
    pub index: usize,
    pub id: String,
    pub namespace: usize,
    pub service: usize,
    pub address: String,
}

pub fn plan_proxies(mesh: &Mesh, proxies: usize) -> Vec<ProxyPlan> {
    (0..proxies)
        .map(|p| ProxyPlan {
            index: p,
            id: format!("bench-proxy-{p:04}"),
            namespace: p % mesh.namespaces,
            service: (p / mesh.namespaces) % mesh.per_namespace(),
            address: format!("172.{}.{}.{}:15006", 16 + ((p >> 16) & 0x0f), (p >> 8) & 0xff, p & 0xff),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Mesh {
        Mesh { namespaces: 3, services: 30, endpoints_per_service: 4 }
    }

    #[test]
    fn files_hold_every_service_and_its_endpoints_and_parse() {
        let mesh = small();
        let dir = std::env::temp_dir().join(format!("push-scale-mesh-test-{}", std::process::id()));
        let files = mesh.write_files(&dir, 4).unwrap();
        assert_eq!(files.len(), 4);
        let mut services = 0;
        let mut endpoints = 0;
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for doc in trellis_api::parse_documents(&text, "mesh").unwrap() {
                match doc {
                    trellis_api::Resource::Service(_) => services += 1,
                    trellis_api::Resource::Endpoints(e) => {
                        assert_eq!(e.endpoints.len(), 4);
                        endpoints += 1;
                    }
                    other => panic!("unexpected {}", other.key()),
                }
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((services, endpoints), (30, 30));
    }

    #[test]
    fn a_change_is_a_valid_different_document() {
        let mesh = small();
        let before = mesh.service_yaml(2, 7, &Variant::initial());
        let after = mesh.service_yaml(2, 7, &Variant { weight_v2: 55, marker: "bench-1-1".into() });
        assert_ne!(before, after);
        let docs = trellis_api::parse_documents(&after, "change").unwrap();
        assert_eq!(docs[0].key(), mesh.service_key(2, 7));
    }

    #[test]
    fn proxies_spread_over_namespaces() {
        let mesh = Mesh { namespaces: 10, services: 1000, endpoints_per_service: 10 };
        let plans = plan_proxies(&mesh, 200);
        for ns in 0..10 {
            assert_eq!(plans.iter().filter(|p| p.namespace == ns).count(), 20);
        }
        let addresses: std::collections::HashSet<_> = plans.iter().map(|p| &p.address).collect();
        assert_eq!(addresses.len(), 200);
    }
}
