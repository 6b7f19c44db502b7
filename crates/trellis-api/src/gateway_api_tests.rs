//! Gateway API routes as a user sees them: the Trellis documents they turn into, and the exact
//! errors. Expected translations are written as the equivalent Trellis YAML.

use crate::*;

fn parse(text: &str) -> Vec<Resource> {
    parse_documents(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> Vec<String> {
    parse_documents(text, "t.yaml").unwrap_err().0.iter().map(|e| e.to_string()).collect()
}

fn services(docs: &[Resource]) -> Vec<&Service> {
    docs.iter().filter_map(|r| if let Resource::Service(s) = r { Some(&**s) } else { None }).collect()
}

/// Asserts that `gateway` parses into exactly the documents `trellis` does.
fn assert_translates(gateway: &str, trellis: &str) {
    let (got, want) = (parse(gateway), parse(trellis));
    assert_eq!(
        got,
        want,
        "\ngot:\n{}\nwant:\n{}",
        serde_yaml_ng::to_string(&got).unwrap(),
        serde_yaml_ng::to_string(&want).unwrap()
    );
    // What the translation produces is a plain document: it survives the control plane's JSON.
    for doc in got {
        let json = serde_json::to_string(&doc).unwrap();
        assert_eq!(parse_documents(&json, "t.json").unwrap_or_else(|e| panic!("{e}\n{json}")), vec![doc]);
    }
}

/// An HTTPRoute on Service `web` in namespace `shop` with the given rules (indented 4).
fn http_route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: web\n  namespace: \
         shop\nspec:\n  parentRefs:\n    - {{group: \"\", kind: Service, name: web}}\n  rules:\n{rules}"
    )
}

fn weights_of(docs: &[Resource]) -> Vec<(Option<String>, u32)> {
    services(docs)[0].routes[0].to.iter().map(|d| (d.service.clone(), d.weight.0)).collect()
}

#[test]
fn canary_split_is_appended_to_the_declared_service() {
    let gateway = r#"
kind: Service
name: reviews
namespace: shop
ports: [{port: 9080}]
routes:
  - name: debug
    match: {headers: {x-debug: "1"}}
    to: [{service: reviews-debug}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews-canary
  namespace: shop
spec:
  parentRefs:
    - group: ""
      kind: Service
      name: reviews
      port: 9080
  hostnames: [reviews.shop.svc.cluster.local]
  rules:
    - backendRefs:
        - name: reviews-v1
          port: 9080
          weight: 9
        - name: reviews-v2
          port: 9080
          weight: 1
"#;
    let trellis = r#"
kind: Service
name: reviews
namespace: shop
ports: [{port: 9080}]
routes:
  - name: debug
    match: {headers: {x-debug: "1"}}
    to: [{service: reviews-debug}]
  - name: reviews-canary-0-0
    to: [{service: reviews-v1.shop, weight: 90}, {service: reviews-v2.shop, weight: 10}]
"#;
    assert_translates(gateway, trellis);
}

#[test]
fn relative_weights_become_percentages_adding_up_to_100() {
    let route = |a: u32, b: u32| {
        http_route(&format!(
            "    - backendRefs: [{{name: web, port: 80, weight: {a}}}, {{name: web-v2, port: 80, weight: {b}}}]\n"
        ))
    };
    // The parent itself is "this service" (no `service`); others are NAME.NAMESPACE.
    assert_eq!(weights_of(&parse(&route(1, 2))), vec![(None, 33), (Some("web-v2.shop".into()), 67)]);
    assert_eq!(weights_of(&parse(&route(2, 1))), vec![(None, 67), (Some("web-v2.shop".into()), 33)]);
    assert_eq!(weights_of(&parse(&route(9, 1))), vec![(None, 90), (Some("web-v2.shop".into()), 10)]);
    assert_eq!(weights_of(&parse(&route(0, 5))), vec![(None, 0), (Some("web-v2.shop".into()), 100)]);
    assert_eq!(weights_of(&parse(&route(1_000_000, 1))), vec![(None, 100), (Some("web-v2.shop".into()), 0)]);
    let three = http_route("    - backendRefs: [{name: a, weight: 1}, {name: b, weight: 1}, {name: c, weight: 1}]\n");
    let shares: Vec<u32> = weights_of(&parse(&three)).iter().map(|w| w.1).collect();
    assert_eq!(shares, vec![34, 33, 33]);
    // The weight is unset (1) on both.
    let even = http_route("    - backendRefs: [{name: a}, {name: b, namespace: other}]\n");
    assert_eq!(weights_of(&parse(&even)), vec![(Some("a.shop".into()), 50), (Some("b.other".into()), 50)]);
}

#[test]
fn header_match_redirect_and_precedence() {
    let gateway = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
    - matches:
        - path: {type: PathPrefix, value: /old}
          headers: [{name: x-legacy, value: "yes"}]
        - path: {type: Exact, value: /index.html}
      filters:
        - type: RequestRedirect
          requestRedirect:
            scheme: https
            hostname: www.example.com
            path: {type: ReplaceFullPath, replaceFullPath: /new}
            statusCode: 301
    - matches:
        - path: {type: PathPrefix, value: /api/}
          method: POST
          queryParams: [{type: RegularExpression, name: v, value: "[0-9]+"}]
      backendRefs: [{name: web, port: 80}]
"#;
    // Gateway API precedence: exact path first; equal prefixes: the one with a method first.
    // Nothing matches every request, so unmatched requests get 404 (route presence).
    let trellis = r#"
kind: Service
name: web
namespace: shop
routes:
  - name: web-0-1
    match: {path: {exact: /index.html}}
    redirect: {scheme: https, host: www.example.com, path: /new, status: 301}
  - name: web-1-0
    match: {path: {regex: '/api(?:/.*)?'}, method: POST, query: {v: {regex: "[0-9]+"}}}
  - name: web-0-0
    match: {path: {regex: '/old(?:/.*)?'}, headers: {x-legacy: "yes"}}
    redirect: {scheme: https, host: www.example.com, path: /new, status: 301}
  - name: gateway-api-unmatched
    directResponse: {status: 404}
"#;
    assert_translates(gateway, trellis);
}

#[test]
fn path_prefix_matches_whole_segments() {
    let docs = parse(&http_route(
        "    - matches: [{path: {type: PathPrefix, value: /api}}]\n      backendRefs: [{name: web}]\n",
    ));
    let Some(StringMatch::Regex(r)) = &services(&docs)[0].routes[0].matches.path else { panic!() };
    // Anchored the way the proxy compiles route regexes.
    let anchored = regex::Regex::new(&format!("^(?:{})$", r.0)).unwrap();
    for (path, matches) in [("/api", true), ("/api/", true), ("/api/v1/x", true), ("/apix", false), ("/ap", false)] {
        assert_eq!(anchored.is_match(path), matches, "{path}");
    }
}

#[test]
fn url_rewrite_prefix_full_path_and_hostname() {
    let gateway = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: api}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /v1}}]
      filters:
        - type: URLRewrite
          urlRewrite:
            hostname: api.internal
            path: {type: ReplacePrefixMatch, replacePrefixMatch: /api/v1}
      backendRefs: [{name: api, port: 80}]
    - filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /app}}
      backendRefs: [{name: app, port: 80}]
    - matches: [{path: {type: Exact, value: /health}}]
      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /healthz}}}]
      backendRefs: [{name: api}]
"#;
    // `/v1` → `/api/v1` is `/v1` itself plus everything below `/v1/`; `/` → `/app` prefixes all.
    let trellis = r#"
kind: Service
name: api
namespace: shop
routes:
  - name: api-2-0
    match: {path: {exact: /health}}
    rewrite: {path: /healthz}
  - name: api-0-0
    match: {path: {exact: /v1}}
    rewrite: {path: /api/v1, authority: api.internal}
  - name: api-0-0-prefix
    match: {path: {prefix: /v1/}}
    rewrite: {prefix: /api/v1/, authority: api.internal}
  - name: api-1-0
    match: {path: {prefix: /}}
    to: [{service: app.shop}]
    rewrite: {prefix: /app/}
"#;
    assert_translates(gateway, trellis);
}

#[test]
fn request_mirror_by_percent_and_fraction() {
    let gateway = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: orders}]
  rules:
    - filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: orders-shadow, port: 80}, percent: 25}
      backendRefs: [{name: orders, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /bulk}}]
      filters:
        - type: RequestMirror
          requestMirror:
            backendRef: {name: orders, namespace: staging, port: 80}
            fraction: {numerator: 1, denominator: 8}
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            add: [{name: x-mirrored, value: "true"}]
      backendRefs: [{name: orders}]
"#;
    let trellis = r#"
kind: Service
name: orders
namespace: shop
routes:
  - name: orders-1-0
    match: {path: {regex: '/bulk(?:/.*)?'}}
    mirror: {service: orders.staging, percent: 12.5}
    responseHeaders: {add: {x-mirrored: "true"}}
  - name: orders-0-0
    mirror: {service: orders-shadow.shop, percent: 25}
"#;
    assert_translates(gateway, trellis);
}

#[test]
fn timeouts_use_gateway_api_durations() {
    let timeout = |value: &str| {
        let docs =
            parse(&http_route(&format!("    - timeouts: {{request: {value}}}\n      backendRefs: [{{name: web}}]\n")));
        services(&docs)[0].routes[0].timeout.map(|d| d.get())
    };
    let secs = std::time::Duration::from_secs;
    assert_eq!(timeout("10s"), Some(secs(10)));
    assert_eq!(timeout("500ms"), Some(std::time::Duration::from_millis(500)));
    assert_eq!(timeout("1h30m"), Some(secs(5400)));
    assert_eq!(timeout("1m2s3ms"), Some(std::time::Duration::from_millis(62_003)));
    assert_eq!(timeout("0s"), None, "0s disables the timeout");

    let text = http_route("    - timeouts: {request: 1.5s, backendRequest: 1s}\n      backendRefs: [{name: web}]\n");
    assert_eq!(
        errors(&text),
        vec![
            "t.yaml:10:27: spec.rules[0].timeouts.request: `1.5s` is not a Gateway API duration; write 1 to 4 parts \
             of up to 5 digits and a unit (h, m, s, ms), e.g. `10s`, `500ms` or `1h30m`",
            "t.yaml:10:49: spec.rules[0].timeouts.backendRequest: `backendRequest` is not supported (Trellis has no \
             per-attempt timeout without retries); use `request`",
        ]
    );
    let text = http_route("    - timeouts: {request: 99999h}\n      backendRefs: [{name: web}]\n");
    assert_eq!(
        errors(&text),
        vec!["t.yaml:10:27: spec.rules[0].timeouts.request: `99999h` is out of range (at most one year)"]
    );
}

#[test]
fn grpc_route_service_and_method_matches() {
    let gateway = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: greeter, port: 50051}]
  rules:
    - matches:
        - method: {service: helloworld.Greeter, method: SayHello}
          headers: [{name: x-tenant, value: acme}]
        - method: {service: helloworld.Greeter}
      backendRefs: [{name: greeter-v2, port: 50051}]
    - matches:
        - method: {method: Check}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-route, value: health}], remove: [x-debug]}
      backendRefs: [{name: greeter, port: 50051}]
    - matches:
        - method: {type: RegularExpression, service: 'grpc\.reflection\..*'}
      backendRefs: [{name: greeter, port: 50051}]
"#;
    // Longer service first, then longer method; no Service document, so one is synthesised.
    let trellis = r#"
kind: Service
name: greeter
namespace: demo
routes:
  - name: greeter-2-0
    match: {path: {regex: '/(?:grpc\.reflection\..*)/(?:[^/]+)'}}
  - name: greeter-0-0
    match: {path: {exact: /helloworld.Greeter/SayHello}, headers: {x-tenant: acme}}
    to: [{service: greeter-v2.demo}]
  - name: greeter-0-1
    match: {path: {prefix: /helloworld.Greeter/}}
    to: [{service: greeter-v2.demo}]
  - name: greeter-1-0
    match: {path: {regex: '/[^/]+/Check'}}
    requestHeaders: {set: {x-route: health}, remove: [x-debug]}
  - name: gateway-api-unmatched
    directResponse: {status: 404}
"#;
    assert_translates(gateway, trellis);
}

#[test]
fn synthesised_service_keeps_document_order_and_rules_without_backends_answer_500() {
    let text = r#"
kind: Endpoints
service: a
endpoints: [{address: "127.0.0.1:1"}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: a}
spec:
  parentRefs: [{group: core, kind: Service, name: a}]
  rules:
    - matches: [{path: {type: Exact, value: /gone}}]
    - backendRefs: [{name: a, weight: 0}]
---
kind: Proxy
explicit: [{listen: "127.0.0.1:9000", service: a}]
"#;
    let docs = parse(text);
    let keys: Vec<String> = docs.iter().map(Resource::key).collect();
    assert_eq!(keys, vec!["Endpoints/default/a", "Service/default/a", "Proxy/-"]);
    let want = parse(
        "kind: Service\nname: a\nroutes:\n  - name: a-0-0\n    match: {path: {exact: /gone}}\n    directResponse: \
         {status: 500}\n  - name: a-1-0\n    directResponse: {status: 500}\n",
    );
    assert_eq!(docs[1], want[0]);
}

#[test]
fn unsupported_filter_is_named_with_its_position() {
    let text = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
    - filters:
        - type: ExtensionRef
          extensionRef: {group: example.com, kind: Auth, name: a}
        - type: CORS
        - type: Rewrite
      backendRefs: [{name: web}]
"#;
    assert_eq!(
        errors(text),
        vec![
            "t.yaml:8:17: spec.rules[0].filters[0].type: `ExtensionRef` filters are not supported; supported filter \
             types for HTTPRoute: RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, \
             RequestMirror",
            "t.yaml:10:17: spec.rules[0].filters[1].type: `CORS` filters are not supported; supported filter types \
             for HTTPRoute: RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror",
            "t.yaml:11:17: spec.rules[0].filters[2].type: unknown filter type `Rewrite`; supported filter types for \
             HTTPRoute: RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror",
        ]
    );
    let grpc = text.replace("kind: HTTPRoute", "kind: GRPCRoute").replace(
        "        - type: ExtensionRef\n          extensionRef: {group: example.com, kind: Auth, name: \
         a}\n        - type: CORS\n        - type: Rewrite\n",
        "        - type: URLRewrite\n          urlRewrite: {hostname: x}\n",
    );
    assert_eq!(
        errors(&grpc),
        vec![
            "t.yaml:8:17: spec.rules[0].filters[0].type: `URLRewrite` filters are not supported; supported filter \
             types for GRPCRoute: RequestHeaderModifier, ResponseHeaderModifier, RequestMirror"
        ]
    );
}

#[test]
fn filter_fields_must_agree_with_the_type() {
    let text = http_route(
        "    - filters:\n        - type: RequestHeaderModifier\n          responseHeaderModifier: {remove: [a]}\n      \
         backendRefs: [{name: web}]\n",
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.yaml:11:11: spec.rules[0].filters[0]: a `RequestHeaderModifier` filter needs its \
             `requestHeaderModifier` field",
            "t.yaml:12:35: spec.rules[0].filters[0].responseHeaderModifier: does not belong in a \
             `RequestHeaderModifier` filter; set only `requestHeaderModifier`",
        ]
    );
}

#[test]
fn gateway_parent_is_rejected() {
    let text = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs:
    - name: public
      namespace: infra
      sectionName: https
    - group: gateway.networking.k8s.io
      kind: Gateway
      name: internal
  rules:
    - backendRefs: [{name: web}]
"#;
    assert_eq!(
        errors(text),
        vec![
            "t.yaml:6:7: spec.parentRefs[0]: `kind` is unset, so it defaults to `Gateway`, which is not supported: \
             Trellis is a service mesh and attaches routes to Services (GAMMA); write `group: \"\"` and `kind: \
             Service`",
            "t.yaml:10:13: spec.parentRefs[1].kind: a `Gateway` parent is not supported: Trellis is a service mesh \
             and attaches routes to Services (GAMMA); write `group: \"\"` and `kind: Service`",
        ]
    );
}

#[test]
fn service_parent_needs_the_core_group_its_namespace_and_no_section() {
    let text = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs:
    - {kind: Service, name: web}
    - {group: "", kind: Service, name: ratings, namespace: other}
    - {group: "", kind: Service, name: reviews, sectionName: http}
  rules:
    - backendRefs: [{name: web}]
"#;
    assert_eq!(
        errors(text),
        vec![
            "t.yaml:6:7: spec.parentRefs[0]: `group` is unset, so it defaults to `gateway.networking.k8s.io`; a \
             Service parent needs `group: \"\"` (the core group)",
            "t.yaml:7:60: spec.parentRefs[1].namespace: Service `other/ratings` is in another namespace than the \
             route (`shop`): consumer routes, which apply only to clients in the route's namespace, are not \
             supported; put the route in namespace `other`",
            "t.yaml:8:62: spec.parentRefs[2].sectionName: `sectionName` is not supported: Trellis routes apply to \
             every port of a Service; remove it",
        ]
    );
    let none = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules: []\n";
    assert_eq!(
        errors(none),
        vec![
            "t.yaml:5:3: spec: a mesh route needs `parentRefs` naming its Service, e.g. `parentRefs: [{group: \"\", \
             kind: Service, name: NAME}]`; HTTPRoute `r` has none"
        ]
    );
}

#[test]
fn api_version_and_unknown_fields() {
    let text = http_route("    - backendRefs: [{name: web}]\n").replace("k8s.io/v1\n", "k8s.io/v1alpha1\n");
    assert_eq!(
        errors(&text),
        vec![
            "t.yaml:1:13: apiVersion: `gateway.networking.k8s.io/v1alpha1` is not a supported HTTPRoute version; \
             expected one of gateway.networking.k8s.io/v1, gateway.networking.k8s.io/v1beta1"
        ]
    );
    let text = http_route("    - backendRef: [{name: web}]\n");
    assert_eq!(
        errors(&text),
        vec![
            "t.yaml:10:7: spec.rules[0].backendRef: unknown field `backendRef`, expected one of `name`, `matches`, \
             `filters`, `backendRefs`, `timeouts`, `retry`, `sessionPersistence`"
        ]
    );
    let text = http_route("    - matches: [{path: {type: Prefix, value: /a}}]\n");
    assert_eq!(
        errors(&text),
        vec![
            "t.yaml:10:31: spec.rules[0].matches[0].path.type: unknown variant `Prefix`, expected one of `Exact`, \
             `PathPrefix`, `RegularExpression`"
        ]
    );
}

#[test]
fn unsupported_rule_features_are_rejected() {
    let text = http_route(
        "    - retry: {attempts: 2}\n      sessionPersistence: {sessionName: s}\n      backendRefs:\n        - name: \
         web\n          filters: [{type: RequestHeaderModifier}]\n        - {group: multicluster.x-k8s.io, kind: \
         ServiceImport, name: web}\n",
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.yaml:10:14: spec.rules[0].retry: `retry` is not supported on an HTTPRoute; declare the route in a \
             `kind: Service` document to use `retries`",
            "t.yaml:11:27: spec.rules[0].sessionPersistence: `sessionPersistence` is not supported; for affinity \
             declare a `kind: Service` with `loadBalancer: {algorithm: ring-hash, hashOn: {cookie: NAME}}`",
            "t.yaml:14:20: spec.rules[0].backendRefs[0].filters: filters on a backendRef are not supported; put \
             them in the rule's `filters` (they apply to every backend of the rule)",
            "t.yaml:15:19: spec.rules[0].backendRefs[1].group: a backend in group `multicluster.x-k8s.io` is not \
             supported; backends are Services (`group: \"\"`)",
            "t.yaml:15:48: spec.rules[0].backendRefs[1].kind: a `ServiceImport` backend is not supported; backends \
             are Services (`kind: Service`)",
        ]
    );
}

#[test]
fn filter_combinations_that_cannot_be_expressed() {
    let text = http_route(
        "    - matches: [{path: {type: PathPrefix, value: /a}}, {path: {type: PathPrefix, value: /b}}]\n      \
         filters:\n        - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: \
         /}}}\n      backendRefs: [{name: web}]\n    - filters:\n        - type: RequestRedirect\n          \
         requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}\n      backendRefs: [{name: \
         web}]\n    - filters:\n        - {type: RequestMirror, requestMirror: {backendRef: {name: a}}}\n        - \
         {type: RequestMirror, requestMirror: {backendRef: {name: b}}}\n      backendRefs: [{name: web}]\n",
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.yaml:12:56: spec.rules[0].filters[0].urlRewrite.path.type: `ReplacePrefixMatch` needs the rule to \
             have exactly one match, with a `PathPrefix` path",
            "t.yaml:16:42: spec.rules[1].filters[0].requestRedirect.path.type: `ReplacePrefixMatch` is not \
             supported in a redirect; supported: ReplaceFullPath",
            "t.yaml:17:20: spec.rules[1].backendRefs: a rule with a `RequestRedirect` filter (filters[0]) answers \
             requests itself; remove its `backendRefs`",
            "t.yaml:20:18: spec.rules[2].filters[1].type: a second `RequestMirror` filter is not supported: Trellis \
             mirrors a route to one destination (see filters[0])",
        ]
    );
}

#[test]
fn conflicts_found_while_merging() {
    let text = r#"kind: Service
name: web
namespace: shop
ports: [{port: 80}, {port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 8080}]
  rules: [{backendRefs: [{name: web}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: web-grpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: other, port: 81}]
"#;
    assert_eq!(
        errors(text),
        vec![
            "t.yaml:22:18: metadata.name: duplicate HTTPRoute/shop/web: each may be defined once",
            "t.yaml:10:16: spec.parentRefs[0]: Service `shop/web` also has GRPCRoute `shop/web-grpc`; a Service \
             takes either HTTPRoutes or GRPCRoutes (the Gateway API applies only the GRPCRoute to a port, and \
             Trellis routes cover every port); route gRPC methods with HTTPRoute path matches instead",
            "t.yaml:10:60: spec.parentRefs[0].port: a route for port 8080 alone is not supported: Trellis routes \
             apply to every port of a Service, and `shop/web` has ports 80, 8080; remove `port` to attach the \
             route to all of them",
        ]
    );
    // A port the single-port Service has is fine; one it lacks is not.
    let one = text.split("---").take(2).collect::<Vec<_>>().join("---").replace("{port: 80}, ", "");
    assert!(parse_documents(&one, "t.yaml").is_ok());
    let other = one.replace("port: 8080}]\n  rules", "port: 80}]\n  rules");
    assert_eq!(
        errors(&other),
        vec!["t.yaml:10:60: spec.parentRefs[0].port: Service `shop/web` has no port 80; its ports: 8080"]
    );
}

#[test]
fn match_values_are_checked_where_they_are_written() {
    let text = http_route(
        "    - matches:\n        - path: {type: Exact, value: index.html}\n          headers: [{name: \"x \
         a\", value: b}, {name: X-A, value: c}, {name: x-a, value: d}]\n        - path: {type: RegularExpression, \
         value: \"(\"}\n      backendRefs: [{name: Web}]\n",
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.yaml:11:38: spec.rules[0].matches[0].path.value: `index.html` must start with `/`",
            "t.yaml:12:28: spec.rules[0].matches[0].headers[0].name: `x a` is not a valid header name",
            "t.yaml:12:76: spec.rules[0].matches[0].headers[2].name: header `x-a` is already matched by entry 1; \
             list it once",
            "t.yaml:13:50: spec.rules[0].matches[1].path.value: `(` is not a valid regular expression: unclosed group",
            "t.yaml:14:28: spec.rules[0].backendRefs[0].name: `Web` is not a valid name; use 1 to 63 lowercase \
             letters, digits or `-`, not starting or ending with `-`",
        ]
    );
}

#[test]
fn translated_routes_still_go_through_validation() {
    // Two routes matching the same requests: the second can never match.
    let text = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web-v2}]}]
"#;
    assert_eq!(
        errors(text),
        vec![
            "t.yaml:1:1: Service/default/web routes[1]: never matches: routes[0] matches every request it would; \
             put the more specific route first"
        ]
    );
}

#[test]
fn many_errors_stay_cheap_and_keep_their_paths() {
    let one = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: \
               [{name: gw}]\n";
    let text: String = (0..2000).map(|i| one.replace("name: r}", &format!("name: r{i}}}")) + "---\n").collect();
    let started = std::time::Instant::now();
    let errs = errors(&text);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    assert_eq!(errs.len(), 2000);
    // The first ones point at the parentRef; later ones at their document, with the same path.
    assert!(errs[0].starts_with("t.yaml:5:16: spec.parentRefs[0]: `kind` is unset"), "{}", errs[0]);
    assert!(errs[1999].starts_with("t.yaml:11995:1: spec.parentRefs[0]: `kind` is unset"), "{}", errs[1999]);
}

#[test]
fn hostile_gateway_input_never_panics() {
    for text in [
        "kind: HTTPRoute",
        "kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: ''}\nspec: {}",
        "kind: GRPCRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: a}\nspec: {parentRefs: [], \
         rules: 5}",
        "kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: &m {name: a}\nspec:\n  parentRefs: \
         [{group: '', kind: Service, name: a}]\n  rules: [{matches: [{path: {value: ''}}], timeouts: {request: \
         99999h99999h99999h99999h99999h}}]",
        "kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: a}\nspec:\n  parentRefs: \
         [{group: '', kind: Service, name: a}]\n  rules: [{backendRefs: [{name: a, weight: 4294967295}]}]",
        "kind: GRPCRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: a}\nspec:\n  parentRefs: \
         [{group: '', kind: Service, name: a}]\n  rules: [{matches: [{method: {type: RegularExpression, service: \
         '('}}]}]",
    ] {
        let _ = parse_documents(text, "t.yaml");
    }
}
