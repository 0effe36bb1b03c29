//! The combination keys this build computes equal the committed test
//! vectors (`testdata/combination_keys.json`), which an independent
//! implementation of the documented encoding made.

use std::path::Path;

use anyhow::{Context, Result, bail};
use feature_store::combination::{Bins, CombinationKey, KeyValue, encode};
use serde_json::Value;

/// One part of a vector, owned, before it is borrowed as a [`KeyValue`].
enum Part {
    Missing,
    Category(String),
    Bin(u32),
}

fn part(p: &Value) -> Result<(String, Part)> {
    let feature = p["feature"].as_str().context("a feature name")?.to_owned();
    if p["missing"].as_bool() == Some(true) {
        return Ok((feature, Part::Missing));
    }
    if let Some(text) = p["category"].as_str() {
        return Ok((feature, Part::Category(text.to_owned())));
    }
    let edges = p["edges"]
        .as_array()
        .context("edges")?
        .iter()
        .map(|e| e.as_f64().context("a numeric edge"))
        .collect::<Result<Vec<_>>>()?;
    let bins = Bins::new(edges)?;
    let value = match &p["value"] {
        Value::String(s) if s == "NaN" => f64::NAN,
        v => v.as_f64().context("a numeric value")?,
    };
    let expected = p["bin"].as_u64().map(u32::try_from).transpose()?;
    let got = bins.bin(value);
    if got != expected {
        bail!("{feature} = {value}: bin {got:?}, the vector says {expected:?}");
    }
    Ok((feature, got.map_or(Part::Missing, Part::Bin)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn keys_equal_the_committed_test_vectors() -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/combination_keys.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let vectors = doc["vectors"].as_array().context("vectors")?;
    assert!(vectors.len() >= 10, "the file holds the vectors");
    for v in vectors {
        let name = v["name"].as_str().unwrap_or("?");
        let parts = v["parts"]
            .as_array()
            .context("parts")?
            .iter()
            .map(part)
            .collect::<Result<Vec<_>>>()
            .with_context(|| name.to_owned())?;
        let borrowed: Vec<(&str, KeyValue<'_>)> = parts
            .iter()
            .map(|(f, p)| {
                let value = match p {
                    Part::Missing => KeyValue::Missing,
                    Part::Category(t) => KeyValue::Category(t),
                    Part::Bin(i) => KeyValue::Bin(*i),
                };
                (f.as_str(), value)
            })
            .collect();
        assert_eq!(
            hex(&encode(&borrowed)),
            v["encoding"].as_str().unwrap_or(""),
            "{name}: encoding"
        );
        assert_eq!(
            CombinationKey::of(&borrowed).as_str(),
            v["key"].as_str().unwrap_or(""),
            "{name}: key"
        );
    }
    Ok(())
}
