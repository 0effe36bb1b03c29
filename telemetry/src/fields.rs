//! How span fields are written into text log lines, at the cost the request
//! path pays for them.
//!
//! The fmt layer formats every span's fields when the span is created, in
//! case an event inside it is logged later. With the stock formatter every
//! string field goes through `Debug` (quoted and escaped one character at a
//! time), which was about half of what a request's spans cost at `info`.
//! [`PlainFields`] writes logfmt instead: `name=value`, a value quoted only
//! when it needs to be (see `plain`). In JSON mode no
//! line shows span fields (only `trace_id`/`span_id`), so [`NoSpanFields`]
//! writes none.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// logfmt fields: `message` first as is, then ` name=value`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer: &mut writer,
            empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct PlainVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    empty: bool,
    result: fmt::Result,
}

impl<'w> PlainVisitor<'_, 'w> {
    /// Writes one field with `write`, after a space unless it is the first;
    /// once a write failed, nothing more.
    fn field(&mut self, write: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let first = std::mem::replace(&mut self.empty, false);
        self.result = if first {
            Ok(())
        } else {
            self.writer.write_char(' ')
        }
        .and_then(|()| write(self.writer));
    }

    fn name(field: &Field) -> &'static str {
        let name = field.name();
        name.strip_prefix("r#").unwrap_or(name)
    }
}

/// Whether `s` can stand unquoted in a logfmt value: not empty, and no
/// space, control character, quote, backslash or `=`.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b > b' ' && b != b'"' && b != b'=' && b != b'\\' && b != 0x7f)
}

impl Visit for PlainVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = Self::name(field);
        self.field(|w| {
            if name == "message" {
                w.write_str(value)
            } else if plain(value) {
                write!(w, "{name}={value}")
            } else {
                write!(w, "{name}={value:?}")
            }
        });
    }

    /// The error and its sources, `outer: inner: root`.
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut chain = value.to_string();
        let mut source = value.source();
        while let Some(e) = source {
            let _ = write!(chain, ": {e}");
            source = e.source();
        }
        self.record_str(field, &chain);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let name = Self::name(field);
        self.field(|w| write!(w, "{name}={value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let name = Self::name(field);
        self.field(|w| write!(w, "{name}={value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        let name = Self::name(field);
        self.field(|w| write!(w, "{name}={value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = Self::name(field);
        self.field(|w| {
            if name == "message" {
                return write!(w, "{value:?}");
            }
            // Whether the value needs quotes shows only once it is written:
            // write it into this thread's scratch buffer first (a Debug
            // impl that itself logs finds the buffer taken and is quoted).
            SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
                Ok(mut text) => {
                    text.clear();
                    write!(text, "{value:?}")?;
                    if plain(&text) {
                        write!(w, "{name}={text}")
                    } else {
                        write!(w, "{name}={:?}", text.as_str())
                    }
                }
                Err(_) => write!(w, "{name}=\"{value:?}\""),
            })
        });
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// No span fields at all (JSON lines, which never show them).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSpanFields;

impl<'w> FormatFields<'w> for NoSpanFields {
    fn format_fields<R: RecordFields>(&self, _: Writer<'w>, _: R) -> fmt::Result {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_strings_stand_unquoted_and_others_are_quoted() {
        assert!(plain("fraud_detector"));
        assert!(plain("http://127.0.0.1:8500"));
        assert!(!plain(""));
        assert!(!plain("two words"));
        assert!(!plain("a=b"));
        assert!(!plain("say \"hi\""));
        assert!(!plain("line\nbreak"));
    }

    /// What a text line looks like with the fields of its spans and its own.
    #[test]
    fn text_lines_carry_span_fields_in_logfmt() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt as _;

        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::Error::other("poisoned"))?
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("model call failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .fmt_fields(PlainFields)
                .with_writer(move || out.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", front = "grpc", caller = %"dev user");
            let _in = span.enter();
            let infer = tracing::info_span!("infer", endpoint = "http://127.0.0.1:8500", rows = 3);
            let _in = infer.enter();
            tracing::warn!(code = "unavailable", reason = "model server gone", status = ?Some(503), pair = ?(1, 2), "call failed");
            let error = Outer(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer",
            ));
            tracing::warn!(
                error = &error as &(dyn std::error::Error + 'static),
                "call failed"
            );
        });
        let text = String::from_utf8(buffer.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert!(
            text.contains(
                r#"request{front=grpc caller="dev user"}:infer{endpoint=http://127.0.0.1:8500 rows=3}: "#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"call failed code=unavailable reason="model server gone" status=Some(503) pair="(1, 2)""#),
            "{text}"
        );
        assert!(
            text.contains(r#"call failed error="model call failed: no answer""#),
            "{text}"
        );
    }
}
