//! Parser and validator behaviour as a user sees it: what is accepted, and the exact errors.

use super::*;

fn errors(text: &str) -> Vec<String> {
    parse_documents(text, "t.yaml").unwrap_err().0.iter().map(|e| e.to_string()).collect()
}

const REVIEWS: &str = r#"
kind: Service
name: reviews
namespace: shop
ports: [{port: 9080, protocol: http}]
subsets: {v1: {version: v1}, v2: {version: v2}}
routes:
  - name: canary
    match: {path: {prefix: /api}, headers: {x-canary: "1"}}
    to: [{subset: v2, weight: 10}, {subset: v1, weight: 90}]
    timeout: 2s
    retries: {attempts: 3, on: [5xx, reset, {status: 409}], grpc: [unavailable]}
  - to: [{subset: v1}]
loadBalancer: {algorithm: peak-ewma}
---
kind: Endpoints
service: reviews
namespace: shop
endpoints:
  - {address: "127.0.0.1:9081", labels: {version: v1}}
  - {address: "127.0.0.1:9082", labels: {version: v2}, weight: 3, meshed: true}
"#;

#[test]
fn parses_a_service_and_its_endpoints() {
    let docs = parse_documents(REVIEWS, "t.yaml").unwrap();
    assert_eq!(docs.len(), 2);
    let Resource::Service(s) = &docs[0] else { panic!() };
    assert_eq!(s.routes[0].to[0].weight, Percent(10));
    assert_eq!(s.routes[0].timeout.unwrap().get().as_secs(), 2);
    let retries = s.routes[0].retries.as_ref().unwrap();
    assert_eq!(retries.on, vec![RetryOn::ServerError, RetryOn::Reset, RetryOn::Status { status: 409 }]);
    assert_eq!(retries.budget.ratio, Ratio(0.2));
    let Resource::Endpoints(e) = &docs[1] else { panic!() };
    assert_eq!(e.endpoints[1].weight, Weight(3));
    assert!(e.endpoints[1].meshed);
}

#[test]
fn out_of_range_weight_points_at_the_value() {
    let text = REVIEWS.replace("weight: 90", "weight: 120");
    let errs = errors(&text);
    assert_eq!(errs, vec!["t.yaml:10:36: routes[0].to[1].weight: 120 is out of range 0..=100"]);
}

#[test]
fn unknown_field_is_named_with_position() {
    let errs = errors("kind: Service\nname: a\nroutes:\n  - tiemout: 2s\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("t.yaml:4:5: routes[0].tiemout: unknown field `tiemout`, expected one of"),
        "{}",
        errs[0]
    );
}

#[test]
fn unknown_kind_and_missing_kind() {
    assert_eq!(
        errors("kind: Sevice\nname: a\n"),
        vec![
            "t.yaml:1:7: kind: unknown kind `Sevice`; expected one of Service, Endpoints, Policy, Tenant, Telemetry, Proxy, HTTPRoute, GRPCRoute"
        ]
    );
    assert_eq!(
        errors("---\nname: a\n"),
        vec![
            "t.yaml:2:1: kind: missing; expected one of Service, Endpoints, Policy, Tenant, Telemetry, Proxy, HTTPRoute, GRPCRoute"
        ]
    );
}

#[test]
fn weights_must_add_up_and_subsets_must_exist() {
    let text = REVIEWS.replace("weight: 90", "weight: 80").replace("{subset: v1}]", "{subset: v3}]");
    let errs = errors(&text);
    assert_eq!(
        errs,
        vec![
            "t.yaml:2:1: Service/shop/reviews routes[0].to: weights add up to 90 (10 + 80); they must add up to 100",
            "t.yaml:2:1: Service/shop/reviews routes[1].to[0].subset: unknown subset `v3` of service `reviews`; defined subsets: v1, v2",
        ]
    );
}

#[test]
fn shadowed_route_is_reported() {
    let text = "kind: Service\nname: a\nroutes:\n  - match: {path: {prefix: /}}\n  - match: {path: {prefix: /api}}\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("routes[1]: never matches: routes[0] matches every request it would"), "{}", errs[0]);
}

#[test]
fn bad_regex_duration_and_name() {
    let errs = errors("kind: Service\nname: a\nroutes:\n  - match: {path: {regex: \"(\"}}\n");
    assert!(
        errs[0].starts_with("t.yaml:4:19: routes[0].match.path.regex: `(` is not a valid regular expression"),
        "{}",
        errs[0]
    );
    let errs = errors("kind: Service\nname: a\nroutes:\n  - timeout: 2 s\n");
    assert!(errs[0].contains("routes[0].timeout: `2 s` has unknown unit"), "{}", errs[0]);
    let errs = errors("kind: Service\nname: Reviews\n");
    assert!(errs[0].starts_with("t.yaml:2:7: name: `Reviews` is not a valid name"), "{}", errs[0]);
}

#[test]
fn syntax_error_has_position() {
    let errs = errors("kind: Service\nname: [a\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("t.yaml:"), "{}", errs[0]);
}

#[test]
fn json_is_accepted() {
    let docs = parse_documents(r#"{"kind": "Service", "name": "a", "ports": [{"port": 80}]}"#, "t.json").unwrap();
    assert_eq!(docs.len(), 1);
}

#[test]
fn explicit_listener_must_name_a_known_service() {
    let errs = errors("kind: Proxy\nexplicit: [{listen: '127.0.0.1:9000', service: nope}]\n");
    assert_eq!(errs, vec!["t.yaml:1:1: Proxy/- explicit[0].service: unknown service `nope`"]);
}

#[test]
fn hostile_input_never_panics() {
    for text in [
        "",
        "---\n---\n",
        "kind: [",
        "- 1\n- 2",
        "kind: Service\nname: a\nroutes: 5",
        "&a [*a]",
        "kind: Service\nname: a\nsubsets: {v1: [1]}",
    ] {
        let _ = parse_documents(text, "t.yaml");
    }
}

#[test]
fn documents_survive_a_json_round_trip() {
    // The control plane stores and pushes documents as JSON; reading them back must give
    // the same resources.
    let text = format!(
        "{REVIEWS}---\nkind: Service\nname: extra\nnamespace: shop\nloadBalancer: {{algorithm: ring-hash, hashOn: {{cookie: session}}}}\nroutes:\n  - match: {{path: {{regex: \"/a+\"}}, headers: {{x-a: {{prefix: b}}, x-c: {{present: true}}}}, query: {{q: \"1\"}}}}\n    retries: {{attempts: 2, budget: {{ratio: 7%}}}}\n    mirror: {{service: reviews, percent: 12.5}}\n    rewrite: {{path: /x}}\n  - redirect: {{host: example.com, status: 308}}\n"
    );
    let docs = parse_documents(&text, "t.yaml").unwrap();
    for doc in docs {
        let json = serde_json::to_string(&doc).unwrap();
        let again = parse_documents(&json, "t.json").unwrap_or_else(|e| panic!("{e}\n{json}"));
        assert_eq!(again, vec![doc], "{json}");
    }
}

#[test]
fn policies_parse_and_report_mistakes() {
    let good = "kind: Policy\nname: reviews-access\nnamespace: shop\nservice: reviews\nmtls: strict\ndefaultDeny: true\nrules:\n  - name: frontend-reads\n    action: allow\n    from: {identities: ['spiffe://mesh.local/ns/shop/sa/frontend']}\n    to: {methods: [GET], paths: [{prefix: /api}], ports: [9080]}\n  - name: no-admin\n    action: deny\n    to: {paths: [{prefix: /admin}]}\n";
    let docs = parse_documents(good, "p.yaml").unwrap();
    let Resource::Policy(p) = &docs[0] else { panic!() };
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.mtls, Some(MtlsMode::Strict));
    let json = serde_json::to_string(&docs[0]).unwrap();
    assert_eq!(parse_documents(&json, "p.json").unwrap(), docs);

    let errs = errors(&good.replace("spiffe://mesh.local", "https://mesh.local"));
    assert!(
        errs[0].contains("rules[0].from.identities[0]: `https://mesh.local/ns/shop/sa/frontend` is not a SPIFFE ID"),
        "{errs:?}"
    );
    let errs = errors(&good.replace("methods: [GET]", "methods: [get]"));
    assert!(errs[0].contains("rules[0].to.methods[0]: `get` is not an HTTP method"), "{errs:?}");
    let errs = errors(&good.replace("name: no-admin", "name: frontend-reads"));
    assert!(errs[0].contains("rules[1].name: duplicate rule name `frontend-reads`"), "{errs:?}");
    let errs = errors(&good.replace("action: deny", "action: maybe"));
    assert!(errs[0].contains("rules[1].action: unknown variant `maybe`, expected `allow` or `deny`"), "{errs:?}");
    let errs = errors("kind: Policy\nname: empty\n");
    assert!(errs[0].contains("sets nothing: give `rules`, `mtls`, `defaultDeny`, `external` or `egress`"), "{errs:?}");
}

#[test]
fn tenants_and_external_authorizers_are_checked() {
    let e = errors(
        "kind: Tenant\nname: acme\nnamespaces: [shop]\n---\nkind: Tenant\nname: globex\nnamespaces: [billing, shop]\n",
    );
    assert!(e.iter().any(|e| e.contains("namespaces[1]") && e.contains("already belongs to tenant `acme`")), "{e:?}");
    let e = errors("kind: Policy\nname: p\nexternal: {url: 'http://authz.local:9000/check'}\n");
    assert!(e.iter().any(|e| e.contains("is not IP:PORT") && e.contains("http://127.0.0.1:9000/check")), "{e:?}");
    let e = errors("kind: Policy\nname: p\negress: [{name: out}]\n");
    assert!(e.iter().any(|e| e.contains("egress[0]") && e.contains("names no tenant or namespace")), "{e:?}");
    let docs = parse_documents(
        "kind: Policy\nname: p\nexternal: {url: 'http://127.0.0.1:9000/check', cacheTtl: 0s, failOpen: true}\n",
        "t.yaml",
    )
    .unwrap();
    let Resource::Policy(p) = &docs[0] else { panic!() };
    let external = p.external.as_ref().unwrap();
    assert_eq!(external.url.parts(), ("127.0.0.1:9000".parse().unwrap(), "/check"));
    assert_eq!(external.name, "external");
    assert!(external.fail_open && external.cache_ttl.get().is_zero());
}

#[test]
fn a_pushed_json_document_reads_as_its_yaml_does() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut kinds = std::collections::BTreeSet::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let resources = parse_documents(&text, "t.yaml").unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for resource in resources.iter().chain(parse_documents(REVIEWS, "t.yaml").unwrap().iter()) {
            let json = serde_json::to_string(resource).unwrap();
            // Read by the fast path itself, not by falling back to the YAML reader.
            let fast = parse::typed_json(&json).unwrap_or_else(|| panic!("not read as JSON: {json}"));
            assert_eq!(serde_json::to_string(&fast).unwrap(), json);
            // Checked alone, as a pushed document is: the same result as through YAML.
            let show = |r: Result<Vec<Resource>, ConfigErrors>| match r {
                Ok(resources) => serde_json::to_string(&resources).unwrap(),
                Err(e) => e.to_string(),
            };
            assert_eq!(show(parse_json_document(&json, "pushed")), show(parse_documents(&json, "pushed")));
            kinds.insert(json[..json.find(',').unwrap()].to_string());
        }
    }
    assert!(kinds.len() >= 5, "examples cover too few kinds: {kinds:?}");
}

#[test]
fn a_pushed_json_document_with_an_error_is_located_as_yaml_errors_are() {
    let json = r#"{"kind":"Service","name":"web","namespace":"default","ports":[{"port":80,"protocol":"http"}],"bogus":1}"#;
    let errors: Vec<String> =
        parse_json_document(json, "pushed").unwrap_err().0.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("pushed:1:") && errors[0].contains("bogus"), "{errors:?}");
    // Valid JSON that breaks a rule checked across the document is refused too.
    let json = r#"{"kind":"Service","name":"web","namespace":"default","ports":[{"port":80,"protocol":"http"}],"routes":[{"to":[{"subset":"v9"}]}]}"#;
    let errors = parse_json_document(json, "pushed").unwrap_err().to_string();
    assert!(errors.contains("v9"), "{errors}");
    // Two documents are not one.
    assert!(parse::typed_json(r#"{"kind":"Tenant","name":"a","namespaces":["a"]} {"kind":"Tenant"}"#).is_none());
}
