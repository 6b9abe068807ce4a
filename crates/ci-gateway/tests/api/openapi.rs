//! The OpenAPI document: version 3.1, and in step with the router in both directions.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

/// The endpoints the API promises, as (method, path).
const ENDPOINTS: [(&str, &str); 11] = [
    ("get", "/v1/jobs"),
    ("post", "/v1/jobs/{job_id}/runs"),
    ("get", "/v1/runs"),
    ("get", "/v1/runs/{run_id}"),
    ("get", "/v1/runs/{run_id}/events"),
    ("post", "/v1/runs/{run_id}/cancel"),
    ("get", "/v1/audit"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
];

/// A concrete path for a templated one; ids that name nothing, so probing has no effect.
fn concrete(path: &str) -> String {
    path.replace("{job_id}", "job_nope")
        .replace("{run_id}", "run_01ARZ3NDEKTSV4RRFFQ69G5FAV")
}

#[tokio::test]
async fn the_openapi_document_is_3_1_and_documents_every_route_of_the_router() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let reply = app.get("/v1/openapi.json").await;

    // Assert: the version, and the same document as the code generates.
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1."), "{version}");
    let generated = serde_json::to_value(ci_gateway::http::openapi::document()).expect("doc");
    assert_eq!(doc, generated);

    // Every path the router serves is documented, and nothing else is.
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let routed: BTreeSet<&str> = app.route_paths.iter().map(String::as_str).collect();
    assert_eq!(documented, routed, "router and document differ");

    let operations: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(|m| (m.clone(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let promised: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(operations, promised);

    // Every method the router answers on a path is documented, and every documented one is
    // answered (the fallbacks' codes mean "not routed").
    for path in paths.keys() {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let name = method.as_str().to_lowercase();
            let reply = app
                .send(app.client.request(method.clone(), app.url(&concrete(path))))
                .await;
            let code = if reply.status == StatusCode::OK {
                String::new()
            } else {
                reply.json()["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            };
            let routed = code != "method_not_allowed" && code != "not_found";
            let is_documented = operations.contains(&(name.clone(), path.clone()));
            assert_eq!(
                routed, is_documented,
                "{name} {path}: routed {routed}, documented {is_documented} ({})",
                reply.status
            );
        }
    }
}

#[tokio::test]
async fn every_error_status_is_documented_with_the_error_schema_and_the_stream_with_its_events() {
    let app = spawn_app().await;
    let doc = app.get("/v1/openapi.json").await.json();
    let error_ref = "#/components/schemas/ErrorBody";

    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path}");
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, error_ref, "{method} {path} {status}");
                }
            }
        }
    }
    let statuses = |method: &str, path: &str| -> BTreeSet<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .cloned()
            .collect()
    };
    let trigger = statuses("post", "/v1/jobs/{job_id}/runs");
    for s in [
        "200", "201", "400", "404", "409", "413", "415", "422", "502", "503", "504",
    ] {
        assert!(trigger.contains(s), "trigger lacks {s}");
    }
    assert!(statuses("get", "/v1/runs").contains("400"));
    assert!(statuses("post", "/v1/runs/{run_id}/cancel").contains("409"));

    // Headers and query parameters.
    let params = |method: &str, path: &str| -> Vec<String> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| format!("{}:{}", p["in"].as_str().unwrap_or(""), p["name"]))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        params("post", "/v1/jobs/{job_id}/runs").contains(&"header:\"Idempotency-Key\"".into())
    );
    assert!(params("get", "/v1/runs/{run_id}/events").contains(&"header:\"Last-Event-ID\"".into()));
    let listing = params("get", "/v1/runs");
    for q in [
        "job_id",
        "status",
        "created_after",
        "created_before",
        "limit",
        "cursor",
    ] {
        assert!(
            listing.contains(&format!("query:\"{q}\"")),
            "{q}: {listing:?}"
        );
    }
    let poll = params("get", "/v1/runs/{run_id}");
    assert!(
        poll.contains(&"query:\"wait_for\"".into()) && poll.contains(&"query:\"timeout\"".into())
    );

    // The event stream: its media type, its event types and their data schemas.
    let ok = &doc["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]["200"];
    assert!(ok["content"]["text/event-stream"].is_object(), "{ok}");
    let description = ok["description"].as_str().unwrap_or_default();
    for event in ["`status`", "`log`", "`end`", "Last-Event-ID"] {
        assert!(description.contains(event), "{event} in {description}");
    }
    let schemas = &doc["components"]["schemas"];
    for schema in [
        "StatusEventData",
        "LogEventData",
        "EndEventData",
        "RunView",
        "RunList",
    ] {
        assert!(schemas[schema].is_object(), "{schema}");
    }
    let reasons: Vec<&str> = schemas["RunReason"]["enum"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(reasons.contains(&"canceled_by_caller"), "{reasons:?}");
}
