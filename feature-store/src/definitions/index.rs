//! A similarity index declared on a static view (`[static_view.index]`): which
//! vector feature it holds, how vectors are compared, and the HNSW settings
//! the index build job and the gateway's queries use.
//!
//! ```toml
//! [static_view.index]
//! feature = "embedding"
//! distance = "cosine"
//! max_k = 100
//! ```

use serde::Deserialize;

use super::error::DefinitionProblem;
use super::value::FeatureType;
use super::view::FeatureSpec;

/// How two vectors are compared; smaller distances are more similar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// 1 − cosine similarity (0 for the same direction, 2 for opposite).
    Cosine,
    /// 1 − inner product: for vectors that are not unit length, where the
    /// length carries meaning.
    Dot,
    /// Euclidean distance.
    L2,
}

impl Distance {
    /// The name used in definition files and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Distance::Cosine => "cosine",
            Distance::Dot => "dot",
            Distance::L2 => "l2",
        }
    }

    /// Parses [`Distance::as_str`]'s output.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "cosine" => Distance::Cosine,
            "dot" => Distance::Dot,
            "l2" => Distance::L2,
            _ => return None,
        })
    }
}

/// How the index stores vectors: smaller types use less memory and are
/// faster, at some cost in recall (measure it with `mlgw-features index
/// size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// 4 bytes per value.
    F32,
    /// 2 bytes per value; no measurable recall loss on the example.
    F16,
    /// 1 byte per value; recall is capped by the rounding.
    I8,
}

impl Quantization {
    /// The name used in definition files.
    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::F32 => "f32",
            Quantization::F16 => "f16",
            Quantization::I8 => "i8",
        }
    }

    /// Parses [`Quantization::as_str`]'s output.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "f32" => Quantization::F32,
            "f16" => Quantization::F16,
            "i8" => Quantization::I8,
            _ => return None,
        })
    }
}

/// The default [`IndexSpec::max_k`].
pub const DEFAULT_MAX_K: usize = 100;
/// The largest `max_k` a definition may declare.
pub const MAX_K_LIMIT: usize = 1000;
/// The default [`IndexSpec::recall_threshold`].
pub const DEFAULT_RECALL_THRESHOLD: f64 = 0.95;

/// A validated `[static_view.index]`.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    /// The vector feature indexed.
    pub feature: String,
    /// Its length.
    pub dimensions: usize,
    /// How vectors are compared.
    pub distance: Distance,
    /// The most neighbours one query may ask for.
    pub max_k: usize,
    /// The recall@10 against exact search the sizing command holds a
    /// smaller dimension to.
    pub recall_threshold: f64,
    /// How vectors are stored in the index.
    pub quantization: Quantization,
    /// HNSW links per node (M).
    pub connectivity: usize,
    /// Candidates kept while inserting (efConstruction).
    pub expansion_add: usize,
    /// Candidates kept while searching (ef); at least `k` is used.
    pub expansion_search: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIndex {
    pub feature: String,
    pub distance: Distance,
    pub max_k: Option<i64>,
    pub recall_threshold: Option<f64>,
    pub quantization: Option<Quantization>,
    pub connectivity: Option<i64>,
    pub expansion_add: Option<i64>,
    pub expansion_search: Option<i64>,
}

/// Validates `raw` against the view's features; the error names the key
/// (below the index table) and the problem.
pub(super) fn validate_index(
    raw: &RawIndex,
    features: &[FeatureSpec],
) -> Result<IndexSpec, (&'static str, DefinitionProblem)> {
    let problem = |key, text: String| (key, DefinitionProblem::Index(text));
    let feature = features
        .iter()
        .find(|f| f.name == raw.feature)
        .ok_or_else(|| {
            problem(
                "feature",
                format!(
                    "the view has no feature {:?}; name one of its vector(N) features",
                    raw.feature
                ),
            )
        })?;
    let FeatureType::Vector(dimensions) = feature.feature_type else {
        return Err(problem(
            "feature",
            format!(
                "{:?} is a {} feature; an index holds a vector(N) feature",
                raw.feature, feature.feature_type
            ),
        ));
    };
    let bounded =
        |key: &'static str, value: Option<i64>, default: usize, low: i64, high: i64| match value {
            None => Ok(default),
            Some(v) if (low..=high).contains(&v) => Ok(usize::try_from(v).unwrap_or(default)),
            Some(v) => Err(problem(
                key,
                format!("{v} is out of range; use {low} to {high}"),
            )),
        };
    let max_k = bounded(
        "max_k",
        raw.max_k,
        DEFAULT_MAX_K,
        1,
        i64::try_from(MAX_K_LIMIT).unwrap_or(1000),
    )?;
    let connectivity = bounded("connectivity", raw.connectivity, 16, 4, 64)?;
    // efConstruction 128: at 64 the graph of 1M clustered 64-d vectors
    // needed ef 256 to reach recall 0.95 (benches/results/similarity.md);
    // a better graph reaches it at a smaller ef, which every query pays.
    let expansion_add = bounded("expansion_add", raw.expansion_add, 128, 8, 4096)?;
    let expansion_search = bounded("expansion_search", raw.expansion_search, 64, 8, 4096)?;
    let recall_threshold = raw.recall_threshold.unwrap_or(DEFAULT_RECALL_THRESHOLD);
    if !(recall_threshold > 0.0 && recall_threshold <= 1.0) {
        return Err(problem(
            "recall_threshold",
            format!("{recall_threshold} is not a recall; use a number above 0 and at most 1"),
        ));
    }
    Ok(IndexSpec {
        feature: raw.feature.clone(),
        dimensions: usize::from(dimensions),
        distance: raw.distance,
        max_k,
        recall_threshold,
        quantization: raw.quantization.unwrap_or(Quantization::F16),
        connectivity,
        expansion_add,
        expansion_search,
    })
}
