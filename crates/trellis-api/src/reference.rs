//! The configuration reference (`docs/configuration.md`), generated from the resource types'
//! JSON Schemas — field names, types, defaults and the doc comments — so it cannot drift
//! from what the parser accepts. A test compares the checked-in file with this output.

use schemars::Schema;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The kinds, in the order the reference presents them.
fn kinds() -> Vec<(&'static str, &'static str, Schema)> {
    vec![
        (
            "Service",
            "A service's whole behaviour: ports, subsets, routes, load balancing, resilience.",
            schemars::schema_for!(crate::Service),
        ),
        (
            "Endpoints",
            "A static list of a service's instances (the control plane adds registered workloads).",
            schemars::schema_for!(crate::Endpoints),
        ),
        (
            "Policy",
            "Who may call what, and how strictly traffic is mutually authenticated (docs/security.md).",
            schemars::schema_for!(crate::Policy),
        ),
        (
            "Tenant",
            "A group of namespaces; calls between tenants need both sides' consent.",
            schemars::schema_for!(crate::Tenant),
        ),
        (
            "Telemetry",
            "Access logs and tracing for one namespace's proxies (docs/observability.md).",
            schemars::schema_for!(crate::Telemetry),
        ),
        (
            "Proxy",
            "A proxy's own settings: listeners, admin, control plane, workload.",
            schemars::schema_for!(crate::ProxySettings),
        ),
    ]
}

/// The whole reference as markdown.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the resource types (`crates/trellis-api`) by `trellis_api::reference_markdown`;\n\
         a test fails when this file differs from what the code accepts. Regenerate it with\n\
         `TRELLIS_UPDATE_DOCS=1 cargo test -p trellis-api reference`.\n\n\
         Documents are YAML or JSON, several per file, each with a `kind`. Field names are\n\
         camelCase; unknown fields are errors. `trellis validate -f FILE` checks a file.\n\n",
    );
    let mut definitions: BTreeMap<String, Value> = BTreeMap::new();
    for (kind, summary, schema) in kinds() {
        let root = schema.as_value();
        let _ = writeln!(out, "## kind: {kind}\n\n{summary}\n");
        fields(&mut out, root);
        if let Some(defs) = root.get("$defs").and_then(Value::as_object) {
            for (name, def) in defs {
                definitions.insert(name.clone(), def.clone());
            }
        }
    }
    out.push_str("## Types\n\n");
    for (name, def) in &definitions {
        let _ = writeln!(out, "### {name}\n");
        if let Some(description) = def.get("description").and_then(Value::as_str) {
            let _ = writeln!(out, "{}\n", one_line(description));
        }
        if def.get("properties").is_some() {
            fields(&mut out, def);
        } else if let Some(values) = variants(def) {
            let _ = writeln!(out, "One of: {}.\n", values.join(", "));
        } else if let Some(kind) = def.get("type").and_then(Value::as_str) {
            let _ = writeln!(out, "Written as: {kind}.\n");
        }
    }
    out
}

/// A table of an object's fields.
fn fields(out: &mut String, object: &Value) {
    let Some(properties) = object.get("properties").and_then(Value::as_object) else {
        if let Some(values) = variants(object) {
            let _ = writeln!(out, "One of: {}.\n", values.join(", "));
        }
        return;
    };
    let required: Vec<&str> =
        object.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    out.push_str("| field | type | required | default | meaning |\n|---|---|---|---|---|\n");
    for (name, field) in properties {
        let default = field.get("default").map(|d| format!("`{d}`")).unwrap_or_default();
        let description = field.get("description").and_then(Value::as_str).map(one_line).unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{name}` | {} | {} | {default} | {} |",
            type_of(field),
            if required.contains(&name.as_str()) { "yes" } else { "" },
            description.replace('|', "\\|")
        );
    }
    out.push('\n');
}

/// Enumerated values (plain enums, or a `oneOf`/`anyOf` of constants and objects), each
/// with its description when it has one.
fn variants(schema: &Value) -> Option<Vec<String>> {
    let literal = |v: &Value| format!("`{}`", v.as_str().map_or_else(|| v.to_string(), str::to_string));
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(values.iter().map(literal).collect());
    }
    let options = schema.get("oneOf").or_else(|| schema.get("anyOf")).and_then(Value::as_array)?;
    let mut out = Vec::new();
    for option in options {
        let described = |text: String| match option.get("description").and_then(Value::as_str) {
            Some(d) => format!("{text} ({})", one_line(d).trim_end_matches('.')),
            None => text,
        };
        if let Some(value) = option.get("const") {
            out.push(described(literal(value)));
        } else if let Some(values) = option.get("enum").and_then(Value::as_array) {
            let list: Vec<String> = values.iter().map(literal).collect();
            out.push(described(list.join(", ")));
        } else if let Some(properties) = option.get("properties").and_then(Value::as_object) {
            for (key, value) in properties {
                out.push(described(format!("`{{{key}: {}}}`", type_of(value))));
            }
        } else {
            out.push(described(type_of(option)));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A field's type as the reference prints it, linking named types.
fn type_of(schema: &Value) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("[{name}](#{})", name.to_lowercase());
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(options) = schema.get(combinator).and_then(Value::as_array) {
            let named: Vec<String> =
                options.iter().filter(|o| o.get("type").and_then(Value::as_str) != Some("null")).map(type_of).collect();
            if !named.is_empty() && named.iter().all(|n| !n.is_empty()) {
                return named.join(" or ");
            }
        }
    }
    match schema.get("type") {
        Some(Value::String(kind)) if kind == "array" => {
            format!("list of {}", schema.get("items").map(type_of).unwrap_or_else(|| "values".into()))
        }
        Some(Value::String(kind)) if kind == "object" => match schema.get("additionalProperties") {
            Some(values @ Value::Object(_)) => format!("map of string → {}", type_of(values)),
            _ => "object".into(),
        },
        Some(Value::String(kind)) => {
            let kind = if kind == "integer" { "integer" } else { kind };
            match schema.get("enum").and_then(Value::as_array) {
                Some(values) => values
                    .iter()
                    .map(|v| format!("`{}`", v.as_str().unwrap_or(&v.to_string())))
                    .collect::<Vec<_>>()
                    .join(" \\| "),
                None => kind.to_string(),
            }
        }
        Some(Value::Array(kinds)) => {
            kinds.iter().filter_map(Value::as_str).filter(|k| *k != "null").collect::<Vec<_>>().join(" or ")
        }
        _ => "value".into(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    /// docs/configuration.md is what the code generates; `TRELLIS_UPDATE_DOCS=1` rewrites it.
    #[test]
    fn reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let generated = super::reference_markdown();
        if std::env::var_os("TRELLIS_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/configuration.md is out of date; regenerate it: TRELLIS_UPDATE_DOCS=1 cargo test -p trellis-api reference"
        );
        for kind in ["Service", "Endpoints", "Policy", "Tenant", "Telemetry", "Proxy"] {
            assert!(generated.contains(&format!("## kind: {kind}")));
        }
    }
}
