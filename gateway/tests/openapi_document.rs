//! `gateway/openapi.json` is the OpenAPI document the code generates: this
//! test fails when the committed file differs, and rewrites it when run with
//! `UPDATE_OPENAPI=1` (`UPDATE_OPENAPI=1 cargo test -p gateway --test
//! openapi_document`). It also checks the document's frame: the routes, the
//! bearer scheme on the `/v1` API, and that the dev issuer's routes are
//! left out as listed.

use std::collections::BTreeSet;

use feature_store::store::AnyStore;
use gateway::front::rest;

fn generated() -> String {
    let doc = rest::document::<AnyStore>(gateway::admin::rest_routes::<AnyStore>());
    match rest::document_json(&doc) {
        Ok(text) => text,
        Err(e) => panic!("the document cannot be encoded: {e}"),
    }
}

#[test]
fn committed_document_is_generated() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let text = generated();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "gateway/openapi.json differs from the generated document; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test -p gateway --test openapi_document`"
    );
}

#[test]
fn document_lists_the_routes_and_leaves_out_the_dev_issuer() {
    let doc: serde_json::Value = serde_json::from_str(&generated()).unwrap();
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.insert((method.to_uppercase(), path.clone()));
            let secured = op["security"] == serde_json::json!([{"bearerAuth": []}]);
            assert_eq!(secured, path.starts_with("/v1/"), "{method} {path}");
        }
    }
    let expected: BTreeSet<(String, String)> = [
        ("POST", "/v1/models/{model}/predict"),
        ("POST", "/v1/models/{model}/predict-batch"),
        ("POST", "/v1/models/{model}/predict-async"),
        ("GET", "/v1/predictions/{id}"),
        ("POST", "/v1/features/{view}/push"),
        ("POST", "/v1/feedback"),
        ("POST", "/v1/similar/{view}"),
        ("GET", "/v1/admin/models"),
        ("GET", "/v1/admin/models/{model}/routing"),
        ("POST", "/v1/admin/models/{model}/routing"),
        ("GET", "/v1/admin/models/{model}/shadow-report"),
        ("GET", "/v1/admin/tuner/jobs"),
        ("GET", "/v1/admin/tuner/jobs/{job}"),
        ("POST", "/v1/admin/tuner/jobs/{job}/pin"),
        ("POST", "/v1/admin/tuner/jobs/{job}/unpin"),
        ("POST", "/v1/admin/tuner/jobs/{job}/run"),
        ("GET", "/v1/admin/scoring/jobs"),
        ("POST", "/v1/admin/scoring/jobs/{job}/run"),
        ("GET", "/v1/admin/scoring/jobs/{job}/batches"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(ops, expected);
    for (method, path, _why) in rest::UNDOCUMENTED {
        assert!(
            !ops.contains(&(method.to_string(), path.to_string())),
            "{path}"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
}
