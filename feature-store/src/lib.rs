//! Feature store: feature definitions, the `FeatureStore` read/write interface with
//! its ScyllaDB and embedded backends, the moka row cache, static refresh jobs and
//! the refresh auto-tuner.
//!
//! Not built yet: this crate is the home of issue 4 (feature store) and issue 7
//! (auto-tuner). It holds no code so that nothing pretends to work before it does.
