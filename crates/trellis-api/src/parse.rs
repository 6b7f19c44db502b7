//! Reading configuration text (YAML, or JSON as a subset of it) into typed resources.
//!
//! Each document is read twice: once untyped to learn its `kind`, then again straight from
//! the text into its type, so that errors keep their line and column.

use crate::gateway_api::{self, GatewayRoutes, ROUTE_KINDS, RouteKind};
use crate::{ConfigError, ConfigErrors, Endpoints, KINDS, ProxySettings, Resource, Service};
use serde::Deserialize;
use std::path::Path;

/// Most documents one configuration may hold; guards against pathological input.
const MAX_DOCUMENTS: usize = 10_000;

/// Parses every document in `text` (named `file` in errors) and validates them.
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<Resource>, ConfigErrors> {
    parse_documents_in(text, file, &[])
}

/// As [`parse_documents`], validating references against `context` as well: resources that
/// already exist (the control plane passes what its store holds).
pub fn parse_documents_in(text: &str, file: &str, context: &[Resource]) -> Result<Vec<Resource>, ConfigErrors> {
    let mut errors = Vec::new();
    let starts = document_start_lines(text);
    let mut kinds = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        if index >= MAX_DOCUMENTS {
            errors.push(error_at(file, 0, 0, "", format!("more than {MAX_DOCUMENTS} documents")));
            return Err(ConfigErrors(errors));
        }
        let line = starts.get(index).copied().unwrap_or(0);
        match serde_yaml_ng::Value::deserialize(document) {
            Ok(value) => kinds.push(kind_of(&value, file, line)),
            Err(e) => {
                // A syntax error ends the stream: later documents can't be located reliably.
                errors.push(from_yaml_error(file, "", &e));
                return Err(ConfigErrors(errors));
            }
        }
    }

    let mut resources = Vec::new();
    let mut lines = Vec::new();
    let mut gateway_routes = GatewayRoutes::default();
    for (index, (document, kind)) in serde_yaml_ng::Deserializer::from_str(text).zip(kinds).enumerate() {
        let parsed = match kind {
            Ok(None) => continue, // an empty document, e.g. a trailing `---`
            Ok(Some(Kind::Route(kind))) => {
                // Gateway API routes become routes of Services, added after all documents are read.
                let line = starts.get(index).copied().unwrap_or(0);
                let doc = gateway_api::Doc { text, file, index, line, insert_at: resources.len() };
                gateway_routes.read(kind, document, doc, &mut errors);
                continue;
            }
            Ok(Some(Kind::Service)) => typed::<Service>(document, file).map(|s| Resource::Service(Box::new(s))),
            Ok(Some(Kind::Endpoints)) => typed::<Endpoints>(document, file).map(Resource::Endpoints),
            Ok(Some(Kind::Proxy)) => typed::<ProxySettings>(document, file).map(|p| Resource::Proxy(Box::new(p))),
            Ok(Some(Kind::Policy)) => typed::<crate::Policy>(document, file).map(|p| Resource::Policy(Box::new(p))),
            Ok(Some(Kind::Tenant)) => typed::<crate::Tenant>(document, file).map(Resource::Tenant),
            Ok(Some(Kind::Telemetry)) => typed::<crate::Telemetry>(document, file).map(Resource::Telemetry),
            Err(e) => Err(e),
        }
        .map_err(|e| locate_top_level_key(e, text));
        match parsed {
            Ok(resource) => {
                resources.push(resource);
                lines.push(starts.get(index).copied().unwrap_or(0));
            }
            Err(e) => errors.push(e),
        }
    }
    gateway_routes.merge(text, file, &mut resources, &mut lines, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    crate::validate::validate_located(&resources, file, &lines, context)?;
    resources.iter_mut().for_each(Resource::shrink_to_fit);
    resources.shrink_to_fit();
    Ok(resources)
}

/// Parses one document that a program wrote as JSON (what the control plane pushes),
/// validated as [`parse_documents`] would. The JSON is read straight into its type, without
/// the YAML reader's intermediate trees: a proxy reads thousands of these at once, and the
/// transient allocations would stay behind as a fragmented heap. Text that is not such a
/// document goes through [`parse_documents`], whose errors say where it went wrong.
pub fn parse_json_document(text: &str, file: &str) -> Result<Vec<Resource>, ConfigErrors> {
    match typed_json(text) {
        Some(resource) => {
            let mut resources = vec![resource];
            crate::validate::validate_located(&resources, file, &[1], &[])?;
            resources.iter_mut().for_each(Resource::shrink_to_fit);
            Ok(resources)
        }
        None => parse_documents(text, file),
    }
}

/// One JSON document of a kind that maps to one resource, or `None` for anything else
/// (another kind, a syntax or type error) so that the YAML path can locate the error.
pub(crate) fn typed_json(text: &str) -> Option<Resource> {
    #[derive(Deserialize)]
    struct KindOnly<'a> {
        #[serde(borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let kind = serde_json::from_str::<KindOnly>(text).ok()?.kind;
    fn read<'de, T: Deserialize<'de>>(text: &'de str) -> Option<T> {
        let mut reader = serde_json::Deserializer::from_str(text);
        let value = T::deserialize(SkipKind(&mut reader)).ok()?;
        reader.end().ok()?;
        Some(value)
    }
    Some(match &*kind {
        "Service" => Resource::Service(Box::new(read(text)?)),
        "Endpoints" => Resource::Endpoints(read(text)?),
        "Proxy" => Resource::Proxy(Box::new(read(text)?)),
        "Policy" => Resource::Policy(Box::new(read(text)?)),
        "Tenant" => Resource::Tenant(read(text)?),
        "Telemetry" => Resource::Telemetry(read(text)?),
        _ => return None,
    })
}

/// Reads and parses one file.
pub fn parse_file(path: &Path) -> Result<Vec<Resource>, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![error_at(&name, 0, 0, "", format!("cannot read the file: {e}"))]))?;
    parse_documents(&text, &name)
}

enum Kind {
    Service,
    Endpoints,
    Proxy,
    Policy,
    Tenant,
    Telemetry,
    Route(RouteKind),
}

fn kind_of(value: &serde_yaml_ng::Value, file: &str, line: usize) -> Result<Option<Kind>, ConfigError> {
    let map = match value {
        serde_yaml_ng::Value::Null => return Ok(None),
        serde_yaml_ng::Value::Mapping(map) => map,
        _ => return Err(error_at(file, line, 1, "", "a document must be a mapping with a `kind`".into())),
    };
    let valid = KINDS.iter().chain(ROUTE_KINDS).copied().collect::<Vec<_>>().join(", ");
    match map.get("kind") {
        None => Err(error_at(file, line, 1, "kind", format!("missing; expected one of {valid}"))),
        Some(serde_yaml_ng::Value::String(kind)) => match kind.as_str() {
            "Service" => Ok(Some(Kind::Service)),
            "Endpoints" => Ok(Some(Kind::Endpoints)),
            "Proxy" => Ok(Some(Kind::Proxy)),
            "Policy" => Ok(Some(Kind::Policy)),
            "Tenant" => Ok(Some(Kind::Tenant)),
            "Telemetry" => Ok(Some(Kind::Telemetry)),
            "HTTPRoute" => Ok(Some(Kind::Route(RouteKind::Http))),
            "GRPCRoute" => Ok(Some(Kind::Route(RouteKind::Grpc))),
            other => Err(error_at(file, line, 1, "kind", format!("unknown kind `{other}`; expected one of {valid}"))),
        },
        Some(_) => Err(error_at(file, line, 1, "kind", format!("must be a string, one of {valid}"))),
    }
}

/// Deserializes one document into `T`, ignoring its `kind` field.
pub(crate) fn typed<'de, T: Deserialize<'de>>(
    document: serde_yaml_ng::Deserializer<'de>,
    file: &str,
) -> Result<T, ConfigError> {
    let mut track = serde_path_to_error::Track::new();
    let result = T::deserialize(serde_path_to_error::Deserializer::new(SkipKind(document), &mut track));
    result.map_err(|e| {
        let path = track.path().to_string();
        from_yaml_error(file, if path == "." { "" } else { &path }, &e)
    })
}

/// Errors in a top-level field carry the document's position; point at the key's own line.
pub(crate) fn locate_top_level_key(mut e: ConfigError, text: &str) -> ConfigError {
    let key = e.path.as_str();
    if key.is_empty() || key.contains(['.', '[']) || e.line == 0 {
        return e;
    }
    let prefix = format!("{key}:");
    for (i, line) in text.lines().enumerate().skip(e.line - 1) {
        if i + 1 > e.line && (line.starts_with("---") || line.starts_with("kind:") && i + 1 != e.line) {
            break;
        }
        if line.starts_with(&prefix) {
            e.line = i + 1;
            e.column = prefix.len() + 1 + line[prefix.len()..].len() - line[prefix.len()..].trim_start().len();
            break;
        }
    }
    e
}

fn from_yaml_error(file: &str, path: &str, e: &serde_yaml_ng::Error) -> ConfigError {
    let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    let mut message = e.to_string();
    // The YAML error repeats the position and path that we print in front.
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    // The YAML error may name the enclosing element's path; ours is more precise.
    if let Some((head, rest)) = message.split_once(": ")
        && !head.contains(' ')
        && path.starts_with(head)
    {
        message = rest.to_string();
    }
    error_at(file, line, column, path, message)
}

fn error_at(file: &str, line: usize, column: usize, path: &str, message: String) -> ConfigError {
    ConfigError { file: file.to_string(), line, column, path: path.to_string(), message }
}

/// The 1-based line of each document's first content (not blank, comment or `---`).
pub(crate) fn document_start_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut awaiting_content = true;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            if !awaiting_content {
                awaiting_content = true;
            } else if !starts.is_empty() || i > 0 {
                // `---` right after another separator or at the top: an empty document
                // only if a separator came before it.
                if i > 0 && !starts.is_empty() {
                    starts.push(i + 1);
                }
            }
        } else if awaiting_content && !trimmed.is_empty() && !trimmed.starts_with('#') {
            starts.push(i + 1);
            awaiting_content = false;
        }
    }
    starts
}
/// A deserializer that hides the document's `kind` key from the typed struct, so that
/// `deny_unknown_fields` still catches every other stray key with its position.
struct SkipKind<D>(D);

impl<'de, D: serde::Deserializer<'de>> serde::Deserializer<'de> for SkipKind<D> {
    type Error = D::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_any(SkipKindVisitor(visitor))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_struct(name, fields, SkipKindVisitor(visitor))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

struct SkipKindVisitor<V>(V);

impl<'de, V: serde::de::Visitor<'de>> serde::de::Visitor<'de> for SkipKindVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(SkipKindMap { inner: map, pending: None })
    }
}

struct SkipKindMap<A> {
    inner: A,
    pending: Option<String>,
}

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for SkipKindMap<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        loop {
            let Some(key) = self.inner.next_key::<String>()? else { return Ok(None) };
            if key == "kind" {
                self.inner.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            self.pending = Some(key.clone());
            use serde::de::IntoDeserializer;
            let key_de: serde::de::value::StringDeserializer<A::Error> = key.into_deserializer();
            return seed.deserialize(key_de).map(Some);
        }
    }

    fn next_value_seed<S: serde::de::DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Self::Error> {
        self.pending = None;
        self.inner.next_value_seed(seed)
    }
}
