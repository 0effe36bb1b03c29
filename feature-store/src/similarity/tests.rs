//! The index against brute force on the example embeddings, its artifact
//! round trip, the build job on the embedded store, and the answers to
//! vectors an index cannot search.

use std::path::Path;
use std::time::SystemTime;

use super::sizing::exact_top;
use super::*;
use crate::definitions::{Distance, FeatureDefinitions, IndexSpec, Quantization};
use crate::store::embedded::EmbeddedStore;
use crate::store::{ArtifactStore, BatchStore, RowStore as _};

fn example_vectors() -> Vec<(String, Vec<f32>)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/exports/merchant_embedding.csv");
    let text = std::fs::read_to_string(path).expect("the example embeddings");
    let mut out: Vec<(String, Vec<f32>)> = text
        .lines()
        .skip(1)
        .map(|line| {
            let id = line.split(',').next().expect("id").to_owned();
            let cell = line.split('"').nth(1).expect("quoted vector");
            let v = cell
                .split_whitespace()
                .map(|x| x.parse().expect("a number"))
                .collect();
            (id, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn spec(distance: Distance, dimensions: usize) -> IndexSpec {
    IndexSpec {
        feature: "embedding".into(),
        dimensions,
        distance,
        max_k: 100,
        recall_threshold: 0.95,
        quantization: Quantization::F16,
        connectivity: 16,
        expansion_add: 64,
        expansion_search: 64,
    }
}

fn provenance() -> Provenance {
    Provenance {
        view: "merchant_embedding".into(),
        source_batch: "b-1".into(),
        data_time: SystemTime::UNIX_EPOCH,
    }
}

#[test]
fn recall_at_10_against_brute_force_on_the_example_embeddings() {
    let vectors = example_vectors();
    assert_eq!(vectors.len(), 2000);
    let index = VectorIndex::build(
        &spec(Distance::Cosine, 64),
        provenance(),
        vectors.clone(),
        2,
    )
    .expect("build");
    let (mut hits, mut asked) = (0, 0);
    for q in (0..vectors.len()).step_by(5) {
        let truth = exact_top(&vectors, q, 10, Distance::Cosine);
        let (key, v) = &vectors[q];
        let found = index.search(v, 10, Some(key)).expect("search");
        assert!(
            found.iter().all(|n| n.entity_key != key),
            "{key} found itself"
        );
        hits += found
            .iter()
            .filter(|n| truth.iter().any(|&t| vectors[t].0 == n.entity_key))
            .count();
        asked += 10;
    }
    let recall = hits as f64 / asked as f64;
    assert!(recall >= 0.95, "recall@10 {recall:.3}");
}

#[test]
fn an_artifact_reads_back_into_the_same_answers_and_damage_is_refused() {
    let vectors = example_vectors();
    let index = VectorIndex::build(
        &spec(Distance::Cosine, 64),
        provenance(),
        vectors.clone(),
        1,
    )
    .expect("build");
    let bytes = index.to_bytes().expect("bytes");
    let back = VectorIndex::from_bytes(&bytes).expect("read back");
    assert_eq!(back.header(), index.header());
    for (key, v) in vectors.iter().step_by(97) {
        let a: Vec<_> = index.search(v, 10, None).expect("search");
        let b: Vec<_> = back.search(v, 10, None).expect("search");
        assert_eq!(a, b, "{key}");
        assert_eq!(back.vector_of(key).map(|x| x.len()), Some(64));
    }
    for cut in [4, 20, bytes.len() / 2] {
        let err = VectorIndex::from_bytes(&bytes[..cut]).expect_err("a cut artifact");
        assert!(
            matches!(err, IndexError::Damaged(_) | IndexError::Engine { .. }),
            "{err}"
        );
    }
    let mut wrong = bytes.clone();
    wrong[0] = b'X';
    let err = VectorIndex::from_bytes(&wrong).expect_err("bad magic");
    assert!(err.to_string().contains("bad magic"), "{err}");
}

#[test]
fn queries_an_index_cannot_search_say_why() {
    let vectors = vec![
        ("a".to_owned(), vec![1.0, 0.0]),
        ("b".to_owned(), vec![0.0, 1.0]),
        ("c".to_owned(), vec![3.0, 4.0]),
    ];
    let index =
        VectorIndex::build(&spec(Distance::L2, 2), provenance(), vectors, 1).expect("build");
    let err = index
        .search(&[1.0, 2.0, 3.0], 2, None)
        .expect_err("wrong length");
    assert!(
        err.to_string()
            .contains("has 3 values; this index holds vectors of 2"),
        "{err}"
    );
    let err = index.search(&[f32::NAN, 0.0], 2, None).expect_err("NaN");
    assert!(
        err.to_string().contains("value 0 of the vector is NaN"),
        "{err}"
    );
    // L2 answers are Euclidean distances, nearest first.
    let found = index.search(&[0.0, 0.0], 3, None).expect("search");
    let got: Vec<(&str, f32)> = found.iter().map(|n| (n.entity_key, n.distance)).collect();
    assert_eq!(got[2], ("c", 5.0));
    assert!((got[0].1 - 1.0).abs() < 1e-3, "{got:?}");
    let cosine = VectorIndex::build(
        &spec(Distance::Cosine, 2),
        provenance(),
        vec![("z".to_owned(), vec![0.0, 0.0])],
        1,
    )
    .expect_err("a zero vector under cosine");
    assert!(cosine.to_string().contains("zero vector"), "{cosine}");
}

#[tokio::test]
async fn the_build_job_indexes_the_current_batch_once_and_keeps_two_artifacts() {
    let dir = std::env::temp_dir().join(format!("mlgw-similarity-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = EmbeddedStore::open(&dir.join("f.redb")).expect("open");
    store.apply_schema().await.expect("schema");
    let defs = FeatureDefinitions::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/merchants.toml"),
    )
    .expect("definitions");
    let err = build(&store, &defs, "merchant_embedding", 2, false)
        .await
        .expect_err("nothing loaded yet");
    assert!(matches!(err, BuildError::NoBatch(_)), "{err}");
    let csv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions/exports/merchant_embedding.csv");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let options = crate::refresh::RefreshOptions {
            force: true,
            ..Default::default()
        };
        crate::refresh::run(
            &store,
            &defs,
            "merchant_embedding_weekly",
            None,
            &csv,
            &options,
            &|_| {},
        )
        .await
        .expect("refresh");
        let report = build(&store, &defs, "merchant_embedding", 2, false)
            .await
            .expect("build");
        assert!(report.built && report.vectors == 2000, "{report:?}");
        let again = build(&store, &defs, "merchant_embedding", 2, false)
            .await
            .expect("no-op");
        assert!(!again.built && again.index_batch == report.index_batch);
        ids.push(report.index_batch);
    }
    let current = store.current_batches().await.expect("current");
    assert_eq!(
        current
            .get(&index_target("merchant_embedding"))
            .map(|c| &c.batch_id),
        Some(&ids[2])
    );
    // The newest two artifacts are kept; the oldest was removed.
    let name = |id: &str| artifact_name("merchant_embedding", id);
    assert!(
        store
            .get_artifact(&name(&ids[0]))
            .await
            .expect("read")
            .is_none()
    );
    let kept = store
        .get_artifact(&name(&ids[2]))
        .await
        .expect("read")
        .expect("kept");
    assert!(
        store
            .get_artifact(&name(&ids[1]))
            .await
            .expect("read")
            .is_some()
    );
    let index = VectorIndex::from_bytes(&kept).expect("loads");
    assert_eq!(index.len(), 2000);
    assert_eq!(
        index.header().source_batch,
        current["merchant_embedding"].batch_id
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_large_artifact_is_stored_in_chunks_and_read_back_whole() {
    let dir = std::env::temp_dir().join(format!("mlgw-artifact-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = EmbeddedStore::open(&dir.join("f.redb")).expect("open");
    store.apply_schema().await.expect("schema");
    let bytes: Vec<u8> = (0..(crate::store::ARTIFACT_CHUNK * 2 + 123))
        .map(|i| (i % 251) as u8)
        .collect();
    store.put_artifact("a", &bytes).await.expect("put");
    assert_eq!(
        store.get_artifact("a").await.expect("get"),
        Some(bytes.clone())
    );
    store
        .put_artifact("a", &bytes[..10])
        .await
        .expect("replace");
    assert_eq!(
        store.get_artifact("a").await.expect("get"),
        Some(bytes[..10].to_vec())
    );
    store.delete_artifact("a").await.expect("delete");
    assert_eq!(store.get_artifact("a").await.expect("get"), None);
    std::fs::remove_dir_all(&dir).ok();
}
