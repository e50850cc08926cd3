//! The shared conformance vectors (readers/spec.md section 12): the
//! daemon's key-rendering vectors and the readers' own, which the Node
//! package runs as well.

// Tests may unwrap, expect and index: a panic there is the test failing,
// which is what it should do. The cast lints still hold (Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use cdc_cache::naming::{lease_key, parse_version, Fields, Layout};
use cdc_cache::{Error, KeyValue};
use serde_json::Value;

fn load(path: &str) -> Value {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{full}: {e}"))
}

#[test]
fn key_rendering_matches_the_daemons_vectors() {
    let vectors = load("../../tests/vectors/keys.json");
    let list = vectors["vectors"].as_array().unwrap();
    assert!(list.len() >= 20, "the daemon's vectors are all there");
    for v in list {
        let name = v["name"].as_str().unwrap();
        let json = &v["json"];
        // The number's literal text: exact (serde_json arbitrary_precision).
        let literal = json.to_string();
        let text_of = |j: &Value| j.as_str().map(str::to_owned).unwrap_or_else(|| j.to_string());
        let owned = text_of(json);
        let value = match v["type"].as_str().unwrap() {
            "integer" | "date" | "time" | "timestamp" => KeyValue::IntText(&owned),
            "float64" => KeyValue::F64(literal.parse().unwrap()),
            "float32" => KeyValue::F32(literal.parse().unwrap()),
            "decimal" => KeyValue::Decimal(&owned),
            "boolean" => KeyValue::Bool(json.as_bool().unwrap()),
            "timestamptz" | "uuid" | "text" => KeyValue::Text(json.as_str().unwrap()),
            other => panic!("vector {name:?}: unknown type {other:?}"),
        };
        let rendered = cdc_cache::key("k:{c}", &[("c", value)]).unwrap().unwrap();
        assert_eq!(
            rendered,
            format!("k:{}", v["text"].as_str().unwrap()),
            "vector {name:?}"
        );
    }
}

#[test]
fn version_texts_parse_or_are_refused() {
    let vectors = load("../vectors/versions.json");
    for v in vectors["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let field = v["field"].as_str().unwrap();
        let text = v["text"].as_str().map(str::as_bytes);
        let parsed = parse_version("ver:k", field, text);
        match (v.get("value"), v.get("absent"), v.get("error")) {
            (Some(expected), _, _) => {
                let got = parsed.unwrap_or_else(|e| panic!("vector {name:?}: {e}")).unwrap_or(0);
                assert_eq!(got.to_string(), expected.as_str().unwrap(), "vector {name:?}");
            }
            (_, Some(_), _) => assert!(matches!(parsed, Ok(None)), "vector {name:?}: {parsed:?}"),
            (_, _, Some(kind)) => {
                let e = parsed.expect_err(name);
                assert!(matches!(e, Error::BadVersion { .. }), "vector {name:?}: {e}");
                assert_eq!(e.kind(), kind.as_str().unwrap());
                assert!(e.to_string().contains("ver:k"), "the error names the record: {e}");
            }
            _ => panic!("vector {name:?} expects nothing"),
        }
    }
}

#[test]
fn data_keys_lease_keys_and_stale_keys_are_named_alike() {
    let vectors = load("../vectors/data_keys.json");
    for v in vectors["vectors"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let strings = |j: &Value| -> Vec<String> {
            j.as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let deps = (!v["deps"].is_null()).then(|| strings(&v["deps"]));
        let layout = Layout::new(
            v["prefix"].as_str().unwrap(),
            v["key"].as_str().unwrap(),
            deps.as_deref(),
            &strings(&v["namespaces"]),
        )
        .unwrap();
        assert_eq!(layout.records, strings(&v["records"]), "vector {name:?}: records");
        let field = |record: &str, f: &str| -> Option<u64> {
            let text = v["fields"][record][f].as_str().map(str::as_bytes);
            parse_version(record, f, text).unwrap()
        };
        let epoch = field(&layout.records[0], "e").unwrap_or(0);
        let fields: Vec<Fields> = layout.records[1..]
            .iter()
            .map(|r| Fields {
                v: field(r, "v").unwrap_or(0),
                pv: field(r, "pv"),
            })
            .collect();
        let data_key = layout.data_key(epoch, fields.iter().map(|f| f.v));
        assert_eq!(data_key, v["data_key"].as_str().unwrap(), "vector {name:?}: data key");
        assert_eq!(
            lease_key(&data_key),
            v["lease_key"].as_str().unwrap(),
            "vector {name:?}: lease key"
        );
        let now: u64 = v["now_us"].as_str().unwrap().parse().unwrap();
        let stale = layout.stale_key(epoch, &fields, now);
        match v["stale_key"].as_str() {
            None => assert_eq!(stale, None, "vector {name:?}: no stale key"),
            Some(expected) => {
                let (key, age) = stale.unwrap_or_else(|| panic!("vector {name:?}: a stale key"));
                assert_eq!(key, expected, "vector {name:?}: stale key");
                assert_eq!(
                    age.to_string(),
                    v["stale_age_us"].as_str().unwrap(),
                    "vector {name:?}: age"
                );
            }
        }
    }
}
