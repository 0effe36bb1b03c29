//! Asynchronous prediction requests: one record per request ID, written
//! pending when a caller's request is accepted and overwritten with its
//! result (or the reason it failed) by the worker that scored it, read when
//! the caller polls; and idempotency keys, each claimed once for the
//! request ID it was first given. Both expire after the retention the
//! writer names. The store keeps the request's and the result's bytes as
//! given (the gateway's protobuf): it never looks inside them.

use std::future::Future;
use std::time::SystemTime;

use super::StoreError;
use crate::clock::{from_micros, to_micros};

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    /// Accepted, not scored yet; `body` is the request.
    Pending,
    /// Scored; `body` is the result.
    Done,
    /// Not scored, for a reason; `body` says it.
    Failed,
}

impl RequestState {
    fn code(self) -> u8 {
        match self {
            RequestState::Pending => 0,
            RequestState::Done => 1,
            RequestState::Failed => 2,
        }
    }

    fn of_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(RequestState::Pending),
            1 => Some(RequestState::Done),
            2 => Some(RequestState::Failed),
            _ => None,
        }
    }

    /// The state's name in answers: `pending`, `done`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Done => "done",
            RequestState::Failed => "failed",
        }
    }
}

/// Where on the request topic the worker that wrote a result found the
/// request: a replay of that same message (after the worker died before
/// committing) publishes the stored result again; another copy of the
/// request is a duplicate and is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPosition {
    /// The partition.
    pub partition: i32,
    /// The message's offset.
    pub offset: i64,
}

/// One asynchronous request and, once scored, its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The request ID (UUIDv7 text).
    pub id: String,
    /// The model asked for.
    pub model: String,
    /// The subject of the caller's token: only it (or an admin) reads the
    /// record back.
    pub subject: String,
    /// Pending, done or failed.
    pub state: RequestState,
    /// When the request was accepted.
    pub submitted_at: SystemTime,
    /// After this the record is gone.
    pub expires_at: SystemTime,
    /// Set on a result: which message it answered.
    pub position: Option<TopicPosition>,
    /// The request (pending) or the result (done, failed), as the writer
    /// encoded it.
    pub body: Vec<u8>,
}

/// The byte layout's version, first byte of every record.
const LAYOUT: u8 = 1;

impl RequestRecord {
    /// The stored bytes: layout, state, submitted and expiry (µs), the
    /// position (flag, partition, offset), model and subject with their
    /// lengths, then the body to the end.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(48 + self.model.len() + self.subject.len() + self.body.len());
        out.push(LAYOUT);
        out.push(self.state.code());
        out.extend_from_slice(&to_micros(self.submitted_at).to_le_bytes());
        out.extend_from_slice(&to_micros(self.expires_at).to_le_bytes());
        match self.position {
            Some(p) => {
                out.push(1);
                out.extend_from_slice(&p.partition.to_le_bytes());
                out.extend_from_slice(&p.offset.to_le_bytes());
            }
            None => out.push(0),
        }
        for text in [&self.model, &self.subject] {
            out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads [`Self::to_bytes`]'s layout back for request `id`.
    ///
    /// # Errors
    /// [`StoreError::Damaged`] naming the request when the bytes are not
    /// that layout.
    pub fn from_bytes(id: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |why: &str| StoreError::damaged(format!("asynchronous request {id}"), why);
        let mut r = Cursor(bytes);
        if r.take(1).ok_or_else(|| corrupt("empty"))?[0] != LAYOUT {
            return Err(corrupt("unknown layout"));
        }
        let state = r
            .take(1)
            .and_then(|b| RequestState::of_code(b[0]))
            .ok_or_else(|| corrupt("unknown state"))?;
        let submitted_at = from_micros(r.i64().ok_or_else(|| corrupt("truncated"))?);
        let expires_at = from_micros(r.i64().ok_or_else(|| corrupt("truncated"))?);
        let position = match r.take(1).ok_or_else(|| corrupt("truncated"))?[0] {
            0 => None,
            _ => {
                let partition = r
                    .take(4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_le_bytes)
                    .ok_or_else(|| corrupt("truncated"))?;
                let offset = r.i64().ok_or_else(|| corrupt("truncated"))?;
                Some(TopicPosition { partition, offset })
            }
        };
        let model = r.text().ok_or_else(|| corrupt("bad model name"))?;
        let subject = r.text().ok_or_else(|| corrupt("bad subject"))?;
        Ok(RequestRecord {
            id: id.to_owned(),
            model,
            subject,
            state,
            submitted_at,
            expires_at,
            position,
            body: r.0.to_vec(),
        })
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
    }

    fn text(&mut self) -> Option<String> {
        let len = self
            .take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)?;
        let bytes = self.take(usize::try_from(len).ok()?)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// An idempotency key to claim: the key as the store keeps it (the caller
/// scopes it, e.g. by subject and model), the request ID it stands for, and
/// until when.
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyClaim<'a> {
    /// The scoped key.
    pub key: &'a str,
    /// The new request's ID.
    pub id: &'a str,
    /// After this the key may be claimed again.
    pub expires_at: SystemTime,
}

/// Asynchronous requests and their results, and idempotency keys.
pub trait RequestStore: Send + Sync + 'static {
    /// Writes `records` (new or replacing the same IDs); each lives until
    /// its `expires_at`.
    fn put_requests(
        &self,
        records: &[RequestRecord],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The record of request `id`, unless unknown or expired.
    fn get_request(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<RequestRecord>, StoreError>> + Send;

    /// Claims an idempotency key for a new request: `None` when the claim
    /// won (the key now stands for `claim.id`), or the ID of the request
    /// that claimed it first and has not expired. Atomic: of two concurrent
    /// claims, one wins.
    fn claim_idempotency(
        &self,
        claim: IdempotencyClaim<'_>,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let at = from_micros(1_700_000_000_123_456);
        for (state, position) in [
            (RequestState::Pending, None),
            (
                RequestState::Done,
                Some(TopicPosition {
                    partition: 3,
                    offset: 1 << 40,
                }),
            ),
            (RequestState::Failed, None),
        ] {
            let record = RequestRecord {
                id: "0190f5b2-8c1e-7c3a-9d7e-2f1a3b4c5d6e".into(),
                model: "fraud".into(),
                subject: "svc-payments@corp".into(),
                state,
                submitted_at: at,
                expires_at: at + Duration::from_secs(86_400),
                position,
                body: vec![0, 1, 2, 255],
            };
            let back = RequestRecord::from_bytes(&record.id, &record.to_bytes());
            assert_eq!(back.ok(), Some(record));
        }
    }

    #[test]
    fn damaged_bytes_are_refused_not_misread() {
        let record = RequestRecord {
            id: "r".into(),
            model: "fraud".into(),
            subject: "s".into(),
            state: RequestState::Pending,
            submitted_at: from_micros(0),
            expires_at: from_micros(1),
            position: None,
            body: vec![],
        };
        let bytes = record.to_bytes();
        for cut in [0, 1, 5, 19, 22] {
            assert!(
                RequestRecord::from_bytes("r", &bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut wrong = bytes.clone();
        wrong[1] = 9;
        assert!(RequestRecord::from_bytes("r", &wrong).is_err());
    }
}
