//! The browser's session: the access token the console's login obtained,
//! carried in an `HttpOnly` cookie instead of an `Authorization` header, so
//! page scripts never hold it. It is verified exactly as a bearer token is.
//!
//! A cookie is sent by the browser on every request to this origin, also
//! ones a hostile page makes it send; so a request that changes anything
//! must also carry `X-CSRF-Token`, a value derived from the token that only
//! a page of this origin can read (from `/console/session`). The cookie is
//! `SameSite=Strict` as well, and a request whose `Origin` names another
//! site is refused. Nothing is kept on the server: any replica checks any
//! session.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The session cookie's name.
pub const COOKIE: &str = "mlgw_session";
/// The header a changing request must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Why a cookie-authenticated request is refused before its token is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrfError {
    /// A changing request without the header, or with another value.
    #[error(
        "a request that changes something with the session cookie must carry the X-CSRF-Token header from /console/session"
    )]
    Token,
    /// The `Origin` header names another site.
    #[error("the request comes from another site ({0})")]
    Origin(String),
}

/// The session token in the request's `Cookie` headers, if any.
pub fn token(headers: &http::HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE)
}

/// The non-empty value of cookie `name` in the request's `Cookie`
/// headers, if any.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, value) = pair.trim().split_once('=')?;
            (n == name && !value.is_empty()).then_some(value)
        })
}

/// A `Set-Cookie` value: `HttpOnly`, `Secure` when asked.
pub fn set_cookie_named(
    name: &str,
    value: &str,
    path: &str,
    max_age_s: u64,
    same_site: &str,
    secure: bool,
) -> String {
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age_s}; HttpOnly; SameSite={same_site}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The CSRF value of a session token: a hash no other site can compute
/// without the token, which it cannot read.
pub fn csrf_value(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("mlgw-console-csrf\u{0}{token}").as_bytes(),
    );
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Whether `method` changes nothing (no CSRF check).
pub fn is_safe(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// Checks a cookie-authenticated request with session `token`: its
/// `Origin` (when sent) must be this host, and a changing request must
/// carry the token's CSRF value.
///
/// # Errors
/// [`CsrfError`].
pub fn check(
    method: &http::Method,
    headers: &http::HeaderMap,
    token: &str,
) -> Result<(), CsrfError> {
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if host.is_empty() || origin_host != host {
            return Err(CsrfError::Origin(origin.to_owned()));
        }
    }
    if is_safe(method) {
        return Ok(());
    }
    let expected = csrf_value(token);
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(CsrfError::Token)?;
    // Constant time: the value is a secret an attacker may probe for.
    if aws_lc_rs::constant_time::verify_slices_are_equal(sent.as_bytes(), expected.as_bytes())
        .is_err()
    {
        return Err(CsrfError::Token);
    }
    Ok(())
}

/// The `Set-Cookie` value that stores `token` for `max_age_s` seconds;
/// `secure` unless the gateway is reached over loopback HTTP.
pub fn set_cookie(token: &str, max_age_s: u64, secure: bool) -> String {
    set_cookie_named(COOKIE, token, "/", max_age_s, "Strict", secure)
}

/// The `Set-Cookie` value that removes the session.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn the_token_is_found_among_other_cookies() {
        let h = headers(&[
            ("cookie", "theme=dark; mlgw_session=abc.def.ghi"),
            ("cookie", "other=1"),
        ]);
        assert_eq!(token(&h), Some("abc.def.ghi"));
        assert_eq!(token(&headers(&[("cookie", "mlgw_sessionx=1")])), None);
        assert_eq!(token(&headers(&[("cookie", "mlgw_session=")])), None);
    }

    #[test]
    fn reads_pass_and_changes_need_the_derived_value() {
        let post = http::Method::POST;
        let h = headers(&[("host", "127.0.0.1:8080")]);
        assert_eq!(check(&http::Method::GET, &h, "t"), Ok(()));
        assert_eq!(check(&post, &h, "t"), Err(CsrfError::Token));
        let good = headers(&[("host", "127.0.0.1:8080"), (CSRF_HEADER, &csrf_value("t"))]);
        assert_eq!(check(&post, &good, "t"), Ok(()));
        // The value of another session does not do.
        assert_eq!(check(&post, &good, "u"), Err(CsrfError::Token));
    }

    #[test]
    fn another_sites_origin_is_refused_even_for_reads() {
        let h = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert!(matches!(
            check(&http::Method::GET, &h, "t"),
            Err(CsrfError::Origin(_))
        ));
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert_eq!(check(&http::Method::GET, &same, "t"), Ok(()));
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let c = set_cookie("tok", 60, true);
        assert_eq!(
            c,
            "mlgw_session=tok; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure"
        );
        assert!(!clear_cookie(false).contains("Secure"));
    }
}
