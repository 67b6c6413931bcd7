//! The one JSON writer for OCI documents: RFC 8785 canonical JSON (keys sorted at every depth,
//! no whitespace), so a document's bytes, and so its digest, depend only on its content and
//! never on map iteration order or the process that wrote it.

use canon_json::CanonJsonSerialize;
use serde::Serialize;

/// Serialize `value` as canonical JSON.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Only maps with non-string keys fail, and no OCI document has one.
    value
        .to_canon_json_vec()
        .expect("OCI documents serialize to canonical JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_are_sorted_at_every_depth_whatever_the_map_order() {
        let keys = ["zeta", "alpha", "Mid", "é", "a.b", "a"];
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            a.insert(k.to_string(), HashMap::from([("y", i), ("x", i)]));
        }
        for (i, k) in keys.iter().enumerate().rev() {
            b.insert(k.to_string(), HashMap::from([("x", i), ("y", i)]));
        }
        let text = String::from_utf8(to_vec(&a)).unwrap();
        assert_eq!(to_vec(&a), to_vec(&b));
        assert_eq!(
            text,
            r#"{"Mid":{"x":2,"y":2},"a":{"x":5,"y":5},"a.b":{"x":4,"y":4},"alpha":{"x":1,"y":1},"zeta":{"x":0,"y":0},"é":{"x":3,"y":3}}"#
        );
    }

    #[test]
    fn strings_are_escaped_minimally_and_nothing_is_pretty_printed() {
        let v = serde_json::json!({"s": "tab\there \"q\" \\ / \u{1} é", "n": [1, -2, 0], "e": {}});
        assert_eq!(
            String::from_utf8(to_vec(&v)).unwrap(),
            r#"{"e":{},"n":[1,-2,0],"s":"tab\there \"q\" \\ / \u0001 é"}"#
        );
    }

    #[test]
    fn output_parses_back_to_the_same_value() {
        let v = serde_json::json!({"b": [{"d": null, "c": true}], "a": "x"});
        let back: serde_json::Value = serde_json::from_slice(&to_vec(&v)).unwrap();
        assert_eq!(back, v);
    }
}
