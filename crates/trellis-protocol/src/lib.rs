//! The wire protocol between the Trellis control plane and its proxies (`proto/config.proto`):
//! one bidirectional gRPC stream per proxy carrying workload registration, heartbeats,
//! incremental configuration updates and their ACK/NACK; and the `Identity` service that
//! signs workload certificates. Also the OTLP trace messages proxies export spans with.

// Generated code: prost boxes nothing, and the Hello variant is much larger than the others.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("trellis.config.v1");
}

/// OTLP trace export messages (the subset proxies send), for proxies and test receivers.
pub mod otlp {
    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
}

/// Upper bounds of the request latency buckets, in seconds (100 µs to 10 s; +Inf follows):
/// the proxies' histograms and the control plane's percentiles must agree on them.
pub const LATENCY_BOUNDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Whether a response counts as a failure in success rates: a 5xx status (`status_class`
/// 5), or a gRPC status meaning the server failed — the OpenTelemetry convention for server
/// spans: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. Client
/// errors (4xx, NOT_FOUND, PERMISSION_DENIED, …) are the caller's and count as successes.
pub fn is_failure(status_class: u32, grpc_status: Option<u16>) -> bool {
    status_class >= 5 || matches!(grpc_status, Some(2 | 4 | 12 | 13 | 14 | 15))
}

/// A stable 64-bit content hash (FNV-1a), printed as 16 hex digits. Stable across
/// processes and versions, unlike std's hasher, because proxies and the control plane
/// compare the hashes each computed.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut hasher = ContentHasher::default();
    hasher.add(bytes);
    hasher.finish()
}

/// [`content_hash`] of text written to it piece by piece (an [`std::io::Write`]), so that
/// large text need not be built to be hashed.
pub struct ContentHasher(u64);

impl Default for ContentHasher {
    fn default() -> Self {
        ContentHasher(0xcbf29ce484222325)
    }
}

impl ContentHasher {
    fn add(&mut self, bytes: &[u8]) {
        self.0 = bytes.iter().fold(self.0, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3));
    }

    pub fn finish(&self) -> String {
        format!("{:016x}", self.0)
    }
}

impl std::io::Write for ContentHasher {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.add(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The version of a whole configuration: a hash over its resources' names and hashes, in
/// name order.
pub fn version_of<'a>(resources: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(&str, &str)> = resources.into_iter().collect();
    pairs.sort_unstable();
    let mut text = String::new();
    for (name, hash) in pairs {
        text.push_str(name);
        text.push('=');
        text.push_str(hash);
        text.push('\n');
    }
    content_hash(text.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_ignores_order() {
        let a = super::version_of([("Service/a/x", "1"), ("Service/a/y", "2")]);
        let b = super::version_of([("Service/a/y", "2"), ("Service/a/x", "1")]);
        assert_eq!(a, b);
        assert_ne!(a, super::version_of([("Service/a/x", "1")]));
    }

    #[test]
    fn content_hash_is_fnv1a_whether_written_whole_or_in_pieces() {
        use std::io::Write;
        // FNV-1a 64 test vectors: the empty input is the offset basis.
        assert_eq!(super::content_hash(b""), "cbf29ce484222325");
        assert_eq!(super::content_hash(b"a"), "af63dc4c8601ec8c");
        let text = br#"[{"kind":"Service","name":"web"}]"#;
        let mut pieces = super::ContentHasher::default();
        for piece in text.chunks(5) {
            pieces.write_all(piece).unwrap();
        }
        assert_eq!(pieces.finish(), super::content_hash(text));
    }
}

/// The name the trust bundle travels under in every proxy's share of the configuration.
pub const TRUST_BUNDLE_RESOURCE: &str = "TrustBundle/trellis/mesh";

/// The trust bundle as pushed (JSON): the roots to trust and which CA certificate signs
/// now. A proxy whose certificate came from another signer renews at once.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustBundleDocument {
    pub trust_domain: String,
    pub roots_pem: String,
    pub signer: String,
}
