//! Gateway: the gRPC + REST front (auth, routing, enrichment, inference client,
//! post-processing, prediction log, feedback, admin API).
//!
//! Not built yet: this crate is the home of issue 5 (prediction path), issue 6
//! (SSO auth) and issue 8 (rollout). It holds no code so that nothing pretends to
//! work before it does.
