//! Sizing an index by the metric: for each smaller dimension (the vectors
//! projected on their top principal components), the recall@k of its index
//! against exact search in the full space, the query latency and the
//! memory per vector; the recommendation is the smallest dimension whose
//! recall stays at or above the view's declared threshold. A table and an
//! SVG plot show the trade.

use std::fmt::Write as _;
use std::time::{Instant, SystemTime};

use nalgebra::{DMatrix, SymmetricEigen};
use serde::Serialize;

use crate::definitions::{Distance, IndexSpec};

use super::index::{IndexError, Provenance, VectorIndex};
use crate::tuner::plot::escape;

/// One dimension measured.
#[derive(Debug, Clone, Serialize)]
pub struct SizingRow {
    /// Vector length in the index.
    pub dimensions: usize,
    /// Share of the vectors' energy the kept components hold (1 at full size).
    pub explained: f64,
    /// Recall@k against exact search over the full vectors.
    pub recall: f64,
    /// Median query latency, microseconds.
    pub p50_us: f64,
    /// 99th-percentile query latency, microseconds.
    pub p99_us: f64,
    /// Index memory per vector, bytes.
    pub bytes_per_vector: f64,
    /// Seconds to build the index.
    pub build_seconds: f64,
}

/// The whole measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Sizing {
    /// The view.
    pub view: String,
    /// Vectors in the batch.
    pub vectors: usize,
    /// Queries per dimension.
    pub queries: usize,
    /// Neighbours per query.
    pub k: usize,
    /// The declared recall threshold.
    pub threshold: f64,
    /// One row per dimension, largest first.
    pub rows: Vec<SizingRow>,
    /// The smallest dimension whose recall holds the threshold.
    pub recommended: Option<usize>,
}

/// Measures `dims` (each below the full dimension; the full one is always
/// measured too) on `vectors`, with `queries` of the vectors as queries.
///
/// # Errors
/// [`IndexError`] if an index cannot be built or searched.
pub fn size(
    view: &str,
    spec: &IndexSpec,
    vectors: &[(String, Vec<f32>)],
    dims: &[usize],
    k: usize,
    queries: usize,
) -> Result<Sizing, IndexError> {
    let n = vectors.len();
    let full = spec.dimensions;
    let k = k.clamp(1, n.saturating_sub(1).max(1));
    let queries = queries.clamp(1, n.max(1));
    let step = (n / queries).max(1);
    let query_ids: Vec<usize> = (0..n).step_by(step).take(queries).collect();
    let truth: Vec<Vec<usize>> = query_ids
        .iter()
        .map(|&q| exact_top(vectors, q, k, spec.distance))
        .collect();
    let (basis, energy) = principal_components(vectors, full, spec.distance);
    let total_energy: f64 = energy.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    let mut wanted: Vec<usize> = dims
        .iter()
        .copied()
        .filter(|&d| d > 0 && d < full)
        .collect();
    wanted.push(full);
    wanted.sort_unstable_by(|a, b| b.cmp(a));
    wanted.dedup();
    let mut rows = Vec::with_capacity(wanted.len());
    for &d in &wanted {
        let reduced: Vec<(String, Vec<f32>)> = if d == full {
            vectors.to_vec()
        } else {
            vectors
                .iter()
                .map(|(key, v)| (key.clone(), project(v, &basis, d)))
                .collect()
        };
        let reduced_spec = IndexSpec {
            dimensions: d,
            ..spec.clone()
        };
        let started = Instant::now();
        let index = VectorIndex::build(
            &reduced_spec,
            Provenance {
                view: view.to_owned(),
                source_batch: "sizing".to_owned(),
                data_time: SystemTime::now(),
            },
            // A projection may map a vector to zero, which cosine cannot
            // compare: those drop out of this dimension's index.
            reduced
                .iter()
                .filter(|(_, v)| v.iter().any(|&x| x != 0.0))
                .cloned()
                .collect(),
            2,
        )?;
        let build_seconds = started.elapsed().as_secs_f64();
        let mut latencies = Vec::with_capacity(query_ids.len());
        let mut hits = 0usize;
        for (q, expected) in query_ids.iter().zip(&truth) {
            let (key, query) = &reduced[*q];
            let started = Instant::now();
            let found = index.search(query, k, Some(key))?;
            latencies.push(started.elapsed().as_secs_f64() * 1e6);
            hits += found
                .iter()
                .filter(|nb| expected.iter().any(|&e| vectors[e].0 == nb.entity_key))
                .count();
        }
        latencies.sort_unstable_by(f64::total_cmp);
        let explained = if d == full {
            1.0
        } else {
            energy.iter().take(d).sum::<f64>() / total_energy
        };
        rows.push(SizingRow {
            dimensions: d,
            explained,
            recall: hits as f64 / (k * query_ids.len()) as f64,
            p50_us: percentile(&latencies, 0.50),
            p99_us: percentile(&latencies, 0.99),
            bytes_per_vector: index.memory_bytes() as f64 / index.len().max(1) as f64,
            build_seconds,
        });
    }
    let recommended = rows
        .iter()
        .filter(|r| r.recall >= spec.recall_threshold)
        .map(|r| r.dimensions)
        .min();
    Ok(Sizing {
        view: view.to_owned(),
        vectors: n,
        queries: query_ids.len(),
        k,
        threshold: spec.recall_threshold,
        rows,
        recommended,
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn distance(a: &[f32], b: &[f32], kind: Distance) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    match kind {
        Distance::Dot => 1.0 - dot,
        Distance::Cosine => {
            let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            1.0 - dot / (na * nb).max(f64::MIN_POSITIVE)
        }
        Distance::L2 => a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>(),
    }
}

/// The positions of the exact `k` nearest neighbours of vector `q`, itself
/// left out (brute force).
pub fn exact_top(vectors: &[(String, Vec<f32>)], q: usize, k: usize, kind: Distance) -> Vec<usize> {
    let query = &vectors[q].1;
    let mut scored: Vec<(f64, usize)> = vectors
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != q)
        .map(|(i, (_, v))| (distance(query, v, kind), i))
        .collect();
    let k = k.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    scored.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
    scored.truncate(k);
    scored.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// The principal directions of the vectors (rows of the result, largest
/// first) and the energy along each. Cosine and dot products are kept best
/// by the uncentred second moment; L2 is blind to a shift, so it uses the
/// covariance.
fn principal_components(
    vectors: &[(String, Vec<f32>)],
    d: usize,
    kind: Distance,
) -> (Vec<Vec<f64>>, Vec<f64>) {
    let n = vectors.len().max(1) as f64;
    let mut mean = vec![0.0f64; d];
    if kind == Distance::L2 {
        for (_, v) in vectors {
            for (m, x) in mean.iter_mut().zip(v) {
                *m += f64::from(*x) / n;
            }
        }
    }
    let mut moment = DMatrix::<f64>::zeros(d, d);
    let mut centred = vec![0.0f64; d];
    for (_, v) in vectors {
        for ((c, x), m) in centred.iter_mut().zip(v).zip(&mean) {
            *c = f64::from(*x) - m;
        }
        for i in 0..d {
            for j in i..d {
                moment[(i, j)] += centred[i] * centred[j];
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            moment[(i, j)] = moment[(j, i)];
        }
    }
    let eigen = SymmetricEigen::new(moment / n);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_unstable_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
    let basis = order
        .iter()
        .map(|&c| eigen.eigenvectors.column(c).iter().copied().collect())
        .collect();
    let energy = order
        .iter()
        .map(|&c| eigen.eigenvalues[c].max(0.0))
        .collect();
    (basis, energy)
}

fn project(v: &[f32], basis: &[Vec<f64>], d: usize) -> Vec<f32> {
    basis
        .iter()
        .take(d)
        .map(|axis| {
            axis.iter()
                .zip(v)
                .map(|(a, x)| a * f64::from(*x))
                .sum::<f64>() as f32
        })
        .collect()
}

/// The measurement as a Markdown table with the recommendation under it.
pub fn table(s: &Sizing) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| dimensions | energy kept | recall@{} | p50 µs | p99 µs | bytes/vector | build s |",
        s.k
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|");
    for r in &s.rows {
        let mark = if Some(r.dimensions) == s.recommended {
            " ←"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| {}{mark} | {:.3} | {:.3} | {:.1} | {:.1} | {:.0} | {:.2} |",
            r.dimensions,
            r.explained,
            r.recall,
            r.p50_us,
            r.p99_us,
            r.bytes_per_vector,
            r.build_seconds
        );
    }
    let _ = writeln!(out);
    match s.recommended {
        Some(d) => {
            let _ = writeln!(
                out,
                "Recommended: {d} dimensions, the smallest whose recall@{} stays at or above {} ({} vectors, {} queries against exact search over the full vectors).",
                s.k, s.threshold, s.vectors, s.queries
            );
        }
        None => {
            let _ = writeln!(
                out,
                "No dimension reaches recall@{} of {}: raise expansion_search or connectivity, or lower the threshold.",
                s.k, s.threshold
            );
        }
    }
    out
}

/// The measurement as an SVG: recall@k (left axis) and bytes per vector
/// (right axis) against the dimension, the threshold dashed, the
/// recommendation marked.
pub fn svg(s: &Sizing) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 400.0, 70.0, 80.0, 40.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let mut dims: Vec<&SizingRow> = s.rows.iter().collect();
    dims.sort_unstable_by_key(|r| r.dimensions);
    let max_dim = dims.last().map_or(1, |r| r.dimensions).max(1) as f64;
    let min_recall = dims
        .iter()
        .map(|r| r.recall)
        .fold(s.threshold, f64::min)
        .min(0.9);
    let low = (min_recall * 10.0).floor() / 10.0;
    let max_bytes = dims.iter().map(|r| r.bytes_per_vector).fold(1.0, f64::max) * 1.1;
    let x = |d: usize| left + pw * d as f64 / max_dim;
    let y_recall = |r: f64| top + ph * (1.0 - (r - low) / (1.0 - low).max(1e-9));
    let y_bytes = |b: f64| top + ph * (1.0 - b / max_bytes);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = write!(
        out,
        r#"<text x="{left}" y="22" font-size="14">{} — recall@{} and memory by dimension ({} vectors)</text>"#,
        escape(&s.view),
        s.k,
        s.vectors
    );
    // Axes.
    let _ = write!(
        out,
        r#"<line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="black"/><line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{r}" y1="{top}" x2="{r}" y2="{b}" stroke="black"/>"#,
        b = top + ph,
        r = left + pw
    );
    for i in 0..=5 {
        let r = low + (1.0 - low) * f64::from(i) / 5.0;
        let b = max_bytes * f64::from(i) / 5.0;
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{r:.2}</text><text x="{}" y="{}">{b:.0}</text>"#,
            left - 6.0,
            y_recall(r) + 4.0,
            left + pw + 6.0,
            y_bytes(b) + 4.0
        );
    }
    for r in &dims {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x(r.dimensions),
            top + ph + 18.0,
            r.dimensions
        );
    }
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle">dimensions</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle" fill="#1f6feb">recall@{}</text><text x="{}" y="{}" transform="rotate(90 {} {})" text-anchor="middle" fill="#b35900">bytes per vector</text>"##,
        left + pw / 2.0,
        h - 20.0,
        top + ph / 2.0,
        top + ph / 2.0,
        s.k,
        w - 16.0,
        top + ph / 2.0,
        w - 16.0,
        top + ph / 2.0
    );
    // Threshold.
    let _ = write!(
        out,
        r##"<line x1="{left}" y1="{t}" x2="{}" y2="{t}" stroke="#1f6feb" stroke-dasharray="6 4"/><text x="{}" y="{}" fill="#1f6feb">threshold {}</text>"##,
        left + pw,
        left + 6.0,
        y_recall(s.threshold) - 6.0,
        s.threshold,
        t = y_recall(s.threshold)
    );
    let line = |f: &dyn Fn(&SizingRow) -> (f64, f64)| {
        dims.iter()
            .map(|r| {
                let (a, b) = f(r);
                format!("{a:.1},{b:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(
        out,
        r##"<polyline points="{}" fill="none" stroke="#b35900" stroke-width="2"/>"##,
        line(&|r| (x(r.dimensions), y_bytes(r.bytes_per_vector)))
    );
    let _ = write!(
        out,
        r##"<polyline points="{}" fill="none" stroke="#1f6feb" stroke-width="2"/>"##,
        line(&|r| (x(r.dimensions), y_recall(r.recall)))
    );
    for r in &dims {
        let _ = write!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#1f6feb"><title>{} dims: recall {:.3}, p99 {:.0} µs</title></circle>"##,
            x(r.dimensions),
            y_recall(r.recall),
            r.dimensions,
            r.recall,
            r.p99_us
        );
    }
    if let Some(d) = s.recommended {
        let _ = write!(
            out,
            r#"<line x1="{X:.1}" y1="{top}" x2="{X:.1}" y2="{}" stroke="green" stroke-width="1.5"/><text x="{:.1}" y="{}" fill="green">recommended: {d}</text>"#,
            top + ph,
            x(d) + 4.0,
            top + 14.0,
            X = x(d)
        );
    }
    out.push_str("</svg>\n");
    out
}
