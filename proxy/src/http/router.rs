//! Request handling: route, method, body cap, SigV4, quota, JSON, allow-list, secondary
//! authorization, operation — in that order — plus one log line and metrics per request.

use std::convert::Infallible;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use crate::api::{
    ApiError, DecryptRequest, EncryptRequest, ErrorKind, HasRequestMetadata, MetadataOnlyRequest,
    RequestMetadata,
};
use crate::config::valid_key_id;
use crate::ops::{self, validate_metadata, Op};
use crate::state::App;

use super::conns::Conn;

const API_ROOT: &str = "/kms/xks/v1/";
/// Longest path we even look at.
const MAX_PATH: usize = 512;

/// A parsed API path.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiPath<'a> {
    /// Tenant prefix ("" or "/x").
    pub prefix: &'a str,
    /// Operation.
    pub op: Op,
    /// External key id (None for health).
    pub key: Option<&'a str>,
}

/// Parse `{prefix}/kms/xks/v1/keys/{id}/{metadata|encrypt|decrypt}` or `{prefix}/kms/xks/v1/health`.
pub fn parse_path(path: &str) -> Option<ApiPath<'_>> {
    if path.len() > MAX_PATH {
        return None;
    }
    let at = path.rfind(API_ROOT)?;
    let (prefix, rest) = (&path[..at], &path[at + API_ROOT.len()..]);
    if rest == "health" {
        return Some(ApiPath {
            prefix,
            op: Op::Health,
            key: None,
        });
    }
    let rest = rest.strip_prefix("keys/")?;
    let (key, op) = rest.split_once('/')?;
    let op = match op {
        "metadata" => Op::Metadata,
        "encrypt" => Op::Encrypt,
        "decrypt" => Op::Decrypt,
        _ => return None,
    };
    valid_key_id(key).then_some(ApiPath {
        prefix,
        op,
        key: Some(key),
    })
}

/// What one request did, for the log line.
#[derive(Default)]
struct RequestLog {
    request_id: Option<String>,
    prefix: Option<String>,
    op: Option<Op>,
    key: Option<String>,
    principal: Option<String>,
    access_key_id: Option<String>,
    detail: Option<String>,
}

fn json_response(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `GET /ready`, for load balancers: 200 `ready` while the HSM side can serve, 503
/// `not ready: <why>` while it cannot (see `Health::ready`). Unauthenticated and cheap: it reads
/// cached health, never calls the HSM. `/ping` stays pure liveness (the process answers).
pub fn readiness(app: &App) -> Response<Full<Bytes>> {
    let (status, body) = match app.health.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.replace(['\r', '\n'], " ")),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// hyper service entry point, called once the request head has arrived on `conn`.
pub async fn handle(
    app: &App,
    conn: &Conn,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/ping" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return Ok(r);
    }
    if req.uri().path() == "/ready" {
        return Ok(readiness(app));
    }
    let start = Instant::now();
    let mut log = RequestLog::default();
    let result = process(app, conn, req, &mut log).await;
    let (status, outcome, resp) = match result {
        Ok(body) => (200, "ok", json_response(200, body)),
        Err(e) => {
            let mut r = json_response(e.kind.status(), e.body());
            if e.kind == ErrorKind::MethodNotAllowed {
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("POST"));
            }
            if e.kind == ErrorKind::RequestTimeout {
                // The rest of the body may still come; the connection is not reusable.
                r.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            if log.detail.is_none() {
                log.detail = Some(e.message.clone());
            }
            (e.kind.status(), e.kind.name(), r)
        }
    };
    let elapsed = start.elapsed();
    let op = log.op.map_or("-", Op::as_str);
    app.metrics.observe(op, outcome, elapsed.as_secs_f64());
    tracing::info!(
        target: "xki_proxy::request",
        kms_request_id = log.request_id.as_deref().unwrap_or("-"),
        prefix = log.prefix.as_deref().unwrap_or("-"),
        operation = op,
        key = log.key.as_deref().unwrap_or("-"),
        principal = log.principal.as_deref().unwrap_or("-"),
        access_key_id = log.access_key_id.as_deref().unwrap_or("-"),
        outcome,
        status,
        latency_us = elapsed.as_micros() as u64,
        detail = log.detail.as_deref().unwrap_or(""),
        "request"
    );
    Ok(resp)
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::validation(format!(
            "request body is not valid JSON for this operation: {e}"
        ))
    })
}

/// The steps every operation's body goes through, in order: parse it as `R`, note its
/// metadata in the request's log line (so even a refused request is traceable), check the
/// metadata fields `op` requires, then `authorize` (allow-list and secondary authorization).
fn admit<'b, R>(
    body: &'b [u8],
    op: Op,
    log: &mut RequestLog,
    authorize: impl FnOnce(&RequestMetadata, &mut RequestLog) -> Result<(), ApiError>,
) -> Result<R, ApiError>
where
    R: Deserialize<'b> + HasRequestMetadata,
{
    let r: R = parse_json(body)?;
    note_metadata(log, r.request_metadata());
    let md = validate_metadata(r.request_metadata(), op)?;
    authorize(md, log)?;
    Ok(r)
}

fn note_metadata(log: &mut RequestLog, md: Option<&RequestMetadata>) {
    if let Some(md) = md {
        log.request_id.clone_from(&md.kms_request_id);
        log.principal.clone_from(&md.aws_principal_arn);
    }
}

async fn process(
    app: &App,
    conn: &Conn,
    req: Request<Incoming>,
    log: &mut RequestLog,
) -> Result<Vec<u8>, ApiError> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let not_found = || ApiError::new(ErrorKind::InvalidUriPath, "unknown URI path");
    let api = parse_path(&path).ok_or_else(not_found)?;
    log.op = Some(api.op);
    log.prefix = Some(api.prefix.to_string());
    log.key = api.key.map(str::to_string);
    let tenant = app
        .tenants
        .load()
        .get(api.prefix)
        .cloned()
        .ok_or_else(not_found)?;
    if req.method() != Method::POST {
        return Err(ApiError::new(
            ErrorKind::MethodNotAllowed,
            "only POST is allowed",
        ));
    }
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body larger than {} bytes", app.max_body),
        )
    };
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len: usize = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::validation("bad Content-Length"))?;
        if len > app.max_body {
            return Err(too_large());
        }
    }
    let (parts, body) = req.into_parts();
    // The body half of the read timeout (the head half is hyper's header_read_timeout):
    // a total deadline, not one per chunk, so a body dribbled a byte at a time cannot hold
    // the connection longer either.
    let read = Limited::new(body, app.max_body).collect();
    let body = match tokio::time::timeout(app.read_timeout, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(_)) => return Err(ApiError::validation("could not read request body")),
        Err(_) => {
            conn.body_timed_out();
            return Err(ApiError::new(
                ErrorKind::RequestTimeout,
                format!(
                    "request body not received within {} ms",
                    app.read_timeout.as_millis()
                ),
            ));
        }
    };
    // Read in full: from here the connection is being served, never closed to make room.
    conn.serving();

    let who = super::sigv4::verify(
        parts.method.as_str(),
        &path,
        &query,
        &parts.headers,
        &body,
        SystemTime::now(),
        &tenant,
    )
    .map_err(|reason| {
        log.detail = Some(reason);
        ApiError::new(
            ErrorKind::AuthenticationFailed,
            "request signature could not be verified",
        )
    })?;
    log.access_key_id = Some(who.access_key_id);
    conn.authenticated();

    if !tenant.take_quota() {
        return Err(ApiError::new(
            ErrorKind::Throttling,
            "prefix request quota exceeded",
        ));
    }

    if api.op == Op::Health {
        // Never subject to secondary authorization.
        admit::<MetadataOnlyRequest>(&body, api.op, log, |_, _| Ok(()))?;
        return Ok(serde_json::to_vec(&app.health.report()).unwrap_or_default());
    }

    let key = api.key.unwrap_or_default();
    let authorize = |md: &RequestMetadata, log: &mut RequestLog| -> Result<(), ApiError> {
        if key == app.hsm.canary_label || !tenant.key_allowed(key) {
            return Err(ApiError::new(
                ErrorKind::KeyNotFound,
                "external key not found",
            ));
        }
        tenant.authorize(Some(key), md).map_err(|rule| {
            log.detail = Some(format!("denied by rule {rule}"));
            ApiError::new(ErrorKind::AccessDenied, "denied by secondary authorization")
        })
    };
    let out = match api.op {
        Op::Metadata => {
            admit::<MetadataOnlyRequest>(&body, api.op, log, authorize)?;
            serde_json::to_vec(&ops::key_metadata(app, key).await?)
        }
        Op::Encrypt => {
            let r: EncryptRequest = admit(&body, api.op, log, authorize)?;
            Ok(ops::crypto::encrypt(app, key, r).await?)
        }
        Op::Decrypt => {
            let r: DecryptRequest = admit(&body, api.op, log, authorize)?;
            Ok(ops::crypto::decrypt(app, key, r).await?)
        }
        Op::Health => unreachable!("handled above"),
    };
    out.map_err(|_| ApiError::new(ErrorKind::Internal, "response encoding failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            parse_path("/kms/xks/v1/keys/k1/encrypt"),
            Some(ApiPath {
                prefix: "",
                op: Op::Encrypt,
                key: Some("k1")
            })
        );
        assert_eq!(
            parse_path("/t/a/kms/xks/v1/health"),
            Some(ApiPath {
                prefix: "/t/a",
                op: Op::Health,
                key: None
            })
        );
        assert_eq!(parse_path("/kms/xks/v1/keys/k1/sign"), None);
        assert_eq!(parse_path("/kms/xks/v1/keys/a%2Fb/encrypt"), None);
        assert_eq!(parse_path("/kms/xks/v1/keys//encrypt"), None);
        assert_eq!(parse_path("/kms/xks/v2/health"), None);
    }
}
