//! The key-rendering vectors (tests/vectors/keys.json) through this crate:
//! each vector's `json` value, read the way the daemon reads it (a JSON
//! number's literal text, a decimal's string) and the way a reader holds it
//! (typed), renders to the vector's `text`.

// Tests may unwrap, expect and index: a panic there is the test failing,
// which is what it should do. The cast lints still hold (Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use serde_json::Value;

fn vectors() -> Vec<Value> {
    let path = format!("{}/../../tests/vectors/keys.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let all: Value = serde_json::from_str(&text).unwrap();
    let list = all["vectors"].as_array().unwrap().clone();
    assert!(list.len() >= 20, "the vectors are all there");
    list
}

#[test]
fn every_vector_renders_from_its_typed_value() {
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        let json = &v["json"];
        // The number's literal text: exact (serde_json arbitrary_precision).
        let literal = json.as_str().map(str::to_owned).unwrap_or_else(|| json.to_string());
        let rendered = match v["type"].as_str().unwrap() {
            "integer" | "date" | "time" | "timestamp" => cdc_keys::canonical_integer(&literal),
            "float64" => Some(cdc_keys::float64_text(literal.parse().unwrap())),
            "float32" => Some(cdc_keys::float32_text(literal.parse().unwrap())),
            "decimal" => cdc_keys::plain_decimal(&literal),
            "boolean" => Some(json.as_bool().unwrap().to_string()),
            "timestamptz" | "uuid" | "text" => Some(cdc_keys::escape(json.as_str().unwrap())),
            other => panic!("vector {name:?}: unknown type {other:?}"),
        };
        assert_eq!(rendered.as_deref(), v["text"].as_str(), "vector {name:?}");
    }
}

#[cfg(feature = "json")]
#[test]
fn every_vector_renders_from_its_json() {
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        let rendered = cdc_keys::render_json(&v["json"]).unwrap_or_else(|e| panic!("vector {name:?}: {e:?}"));
        assert_eq!(rendered.as_deref(), v["text"].as_str(), "vector {name:?}");
    }
}
