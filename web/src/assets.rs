//! The dashboard's static files, embedded in the binary. The page itself carries its CSS
//! and JS inline (one request); the same files are also served under `/assets/`. They hold
//! no data, so they are served without the token: the page's sign-in form must load.

use std::sync::OnceLock;

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

pub const INDEX_HTML: &str = include_str!("../assets/index.html");
pub const APP_JS: &str = include_str!("../assets/app.js");
pub const STYLE_CSS: &str = include_str!("../assets/style.css");
pub const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

/// The page with the stylesheet and the script inlined.
pub fn page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| {
        INDEX_HTML
            .replacen("/*STYLE*/", STYLE_CSS, 1)
            .replacen("/*SCRIPT*/", APP_JS, 1)
    })
}

fn reply(body: &'static str, content_type: &'static str, cache: &'static str) -> Response {
    let mut r = Response::new(body.into());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

pub fn index() -> Response {
    let mut r = reply(page(), "text/html; charset=utf-8", "no-cache");
    // Everything the page needs comes from this origin; the script and style are inline.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'",
        ),
    );
    r
}

pub fn asset(name: &str) -> Response {
    match name {
        "app.js" => reply(APP_JS, "text/javascript; charset=utf-8", "no-cache"),
        "style.css" => reply(STYLE_CSS, "text/css; charset=utf-8", "no-cache"),
        "favicon.svg" => reply(FAVICON_SVG, "image/svg+xml", "max-age=86400"),
        _ => {
            let mut r = crate::error_response(StatusCode::NOT_FOUND, "no such asset");
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}
