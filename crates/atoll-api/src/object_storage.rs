//! The S3-compatible endpoint the SDKs upload build contexts to, and the
//! temporary credentials `GET /api/object-storage/push-access` hands out.
//!
//! The SDKs' upload clients (Python's obstore, TypeScript's
//! `@aws-sdk/client-s3`) speak S3 with path-style URLs under
//! `{storageUrl}/{bucket}/{key}` and Signature V4. Served here: HEAD/GET
//! object, PutObject, the multipart upload calls (create, part, complete,
//! abort), DeleteObject and ListObjectsV2 (TypeScript checks for an
//! existing context by listing). Objects live in the database in parts,
//! so every API server of a deployment serves every object.
//!
//! Credentials need no table: the access key names the organization and
//! an expiry, and its secret and session token are HMACs of it under a
//! key every API server shares (derived from the stored preview key).
//! A request must be signed with them (the payload hash checked against
//! the body), within 15 minutes of its date, before the expiry, and may
//! only touch keys under `{organizationId}/` in the one bucket.

use crate::error::ApiError;
use crate::AppState;
use atoll_store::{ObjectRecord, UploadRecord};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ring::hmac;
use sha2::{Digest, Sha256};

/// The bucket push-access names.
pub const BUCKET: &str = "atoll-build-contexts";
/// The region push-access names (signatures must use it).
pub const REGION: &str = "us-east-1";
/// Where the endpoint is mounted (the storage URL's path).
pub const PATH: &str = "/s3";
/// How long push-access credentials are good for.
const CREDENTIAL_TTL_SECS: i64 = 3600;
/// Most a request's date may differ from the server's clock.
const MAX_SKEW_SECS: i64 = 15 * 60;
/// Largest body of one request (a part, or a whole small object; the
/// SDKs send 5 MiB parts).
const MAX_REQUEST_BYTES: usize = 16 << 20;
/// MiB of request bodies held in memory at once, for all clients: past
/// it, requests wait (bodies are read whole before they are stored).
static IN_FLIGHT_MIB: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(256);
/// Uploads an organization may have open at once.
const MAX_OPEN_UPLOADS: i64 = 100;
/// Largest object.
const MAX_OBJECT_BYTES: i64 = 2 << 30;
/// Most bytes an organization may keep in the endpoint.
const MAX_ORG_BYTES: i64 = 10 << 30;
/// Most parts of one upload.
const MAX_PARTS: i64 = 10_000;
/// Objects unused this long are collected.
pub const OBJECT_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// Uploads never completed are collected after this long.
pub const STALE_UPLOAD_MS: i64 = 24 * 3600 * 1000;

const ACCESS_KEY_PREFIX: &str = "ATL";

/// Temporary credentials for one organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret: String,
    pub session_token: String,
    pub organization_id: String,
    pub expires_at: i64,
}

fn signing_key(state: &AppState) -> hmac::Key {
    let base = hmac::Key::new(hmac::HMAC_SHA256, state.preview_secret.as_bytes());
    let derived = hmac::sign(&base, b"atoll object storage credentials v1");
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

fn derive(key: &hmac::Key, what: &str, access_key: &str) -> String {
    hex::encode(hmac::sign(key, format!("{what}\0{access_key}").as_bytes()).as_ref())
}

/// Credentials for the organization of API key `key_id`, good until
/// `now + 1 h` and while that key is.
pub fn issue(state: &AppState, org: &str, key_id: &str, now_secs: i64) -> Credentials {
    let expires_at = now_secs + CREDENTIAL_TTL_SECS;
    let access_key = format!(
        "{ACCESS_KEY_PREFIX}{expires_at:016x}{}",
        hex::encode(key_id.as_bytes())
    );
    let key = signing_key(state);
    Credentials {
        secret: derive(&key, "secret", &access_key),
        session_token: derive(&key, "token", &access_key),
        access_key,
        organization_id: org.to_string(),
        expires_at,
    }
}

/// The credentials an access key stands for, if it is one of ours and
/// current.
async fn credentials_of(
    state: &AppState,
    access_key: &str,
    now_secs: i64,
) -> Result<Credentials, S3Error> {
    let denied = || {
        S3Error::new(
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "unknown access key",
        )
    };
    let rest = access_key
        .strip_prefix(ACCESS_KEY_PREFIX)
        .ok_or_else(denied)?;
    if rest.len() < 16 || rest.len() > 16 + 256 {
        return Err(denied());
    }
    let expires_at = i64::from_str_radix(&rest[..16], 16).map_err(|_| denied())?;
    let key_id = hex::decode(&rest[16..])
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(denied)?;
    if expires_at < now_secs {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "ExpiredToken",
            "the credentials have expired; ask push-access for new ones",
        ));
    }
    let key = signing_key(state);
    let creds = Credentials {
        secret: derive(&key, "secret", access_key),
        session_token: derive(&key, "token", access_key),
        access_key: access_key.to_string(),
        organization_id: String::new(),
        expires_at,
    };
    let api_key = state
        .store
        .api_key_by_id(&key_id)
        .await?
        .ok_or_else(denied)?;
    let now_ms = now_secs * 1000;
    if api_key.revoked_at.is_some() || api_key.expires_at.is_some_and(|e| e <= now_ms) {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "the API key these credentials came from is revoked or expired",
        ));
    }
    Ok(Credentials {
        organization_id: api_key.organization_id,
        ..creds
    })
}

/// An S3 error answer (`<Error><Code>…`).
#[derive(Debug)]
pub struct S3Error {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl S3Error {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> S3Error {
        S3Error {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> S3Error {
        S3Error::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<atoll_store::StoreError> for S3Error {
    fn from(e: atoll_store::StoreError) -> S3Error {
        // Raced by a completion or an abort: as S3 answers then.
        if let atoll_store::StoreError::Conflict(m) = &e {
            return if m.contains("changed") {
                S3Error::bad("InvalidPart", m.clone())
            } else {
                S3Error::new(StatusCode::NOT_FOUND, "NoSuchUpload", m.clone())
            };
        }
        if e.is_disk_full() {
            return S3Error::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "InsufficientStorage",
                "the server's storage is full",
            );
        }
        tracing::error!(error = %e, "object storage: database error");
        S3Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "database error",
        )
    }
}

impl IntoResponse for S3Error {
    fn into_response(self) -> Response {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>",
            self.code,
            xml_escape(&self.message)
        );
        (
            self.status,
            [(header::CONTENT_TYPE, "application/xml")],
            body,
        )
            .into_response()
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#34;", "\"")
        .replace("&amp;", "&")
}

fn xml(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/xml")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}"),
    )
        .into_response()
}

// ---- Signature V4 ------------------------------------------------------

/// The Signature V4 signature (hex) of a request to this endpoint, as
/// both sides compute it: `amz_date` is the `x-amz-date` value (its first
/// eight characters the credential's date), `path` the request path as
/// sent, `query` the raw query, `headers` the signed headers (lowercase
/// names, in the order `SignedHeaders` lists them), `payload_hash` the
/// `x-amz-content-sha256` value.
pub fn signature(
    secret: &str,
    amz_date: &str,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    payload_hash: &str,
) -> String {
    let date = amz_date.get(..8).unwrap_or_default();
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| {
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("{name}:{value}\n")
        })
        .collect();
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    let canonical_request = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{}\n{payload_hash}",
        canonical_query(query),
        names.join(";"),
    );
    let scope = format!("{date}/{REGION}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let step = |key: &[u8], data: &[u8]| -> Vec<u8> {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
            .as_ref()
            .to_vec()
    };
    let k = step(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = step(&k, REGION.as_bytes());
    let k = step(&k, b"s3");
    let k = step(&k, b"aws4_request");
    hex::encode(step(&k, to_sign.as_bytes()))
}

/// The `Authorization` header of a client request signed with
/// push-access credentials (see [`signature`] for the arguments).
#[allow(clippy::too_many_arguments)]
pub fn authorization(
    access_key: &str,
    secret: &str,
    amz_date: &str,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
    payload_hash: &str,
) -> String {
    let date = amz_date.get(..8).unwrap_or_default();
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{date}/{REGION}/s3/aws4_request, SignedHeaders={}, Signature={}",
        names.join(";"),
        signature(secret, amz_date, method, path, query, headers, payload_hash)
    )
}

/// Percent-encodes as SigV4 wants: everything but unreserved characters.
fn uri_encode(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

/// The query's pairs, decoded.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                String::from_utf8_lossy(&percent_decode(k)).into_owned(),
                String::from_utf8_lossy(&percent_decode(v)).into_owned(),
            )
        })
        .collect()
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Seconds since the epoch of an `x-amz-date` (`20261206T104512Z`).
fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

struct Authorization<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let mut scope = credential?.split('/');
    let auth = Authorization {
        access_key: scope.next()?,
        date: scope.next()?,
        region: scope.next()?,
        service: scope.next()?,
        signed_headers: signed?.split(';').collect(),
        signature: signature?,
    };
    (scope.next()? == "aws4_request" && scope.next().is_none()).then_some(auth)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The payload hash a request declares.
enum Payload {
    Sha256(String),
    Unsigned,
}

/// Checks a request's signature; the organization it acts for and what
/// its payload must hash to.
async fn authenticate(
    state: &AppState,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    now_secs: i64,
) -> Result<(String, Payload), S3Error> {
    let denied = |m: &str| S3Error::new(StatusCode::FORBIDDEN, "AccessDenied", m);
    let auth = header_str(headers, "authorization")
        .ok_or_else(|| denied("requests must be signed (Signature Version 4)"))?;
    let auth = parse_authorization(auth).ok_or_else(|| {
        S3Error::bad(
            "AuthorizationHeaderMalformed",
            "a malformed Authorization header",
        )
    })?;
    if auth.service != "s3" || auth.region != REGION {
        return Err(S3Error::bad(
            "AuthorizationHeaderMalformed",
            format!("the credential scope must be {REGION}/s3"),
        ));
    }
    let creds = credentials_of(state, auth.access_key, now_secs).await?;
    let amz_date =
        header_str(headers, "x-amz-date").ok_or_else(|| denied("x-amz-date is required"))?;
    let at = parse_amz_date(amz_date).ok_or_else(|| denied("a malformed x-amz-date"))?;
    if (at - now_secs).abs() > MAX_SKEW_SECS {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "RequestTimeTooSkewed",
            "the request's date is too far from the server's time",
        ));
    }
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(denied("the credential scope's date is not the request's"));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.contains(&required) {
            return Err(denied(&format!("{required} must be signed")));
        }
    }
    match header_str(headers, "x-amz-security-token") {
        Some(t) if constant_time_eq(t.as_bytes(), creds.session_token.as_bytes()) => {}
        _ => return Err(denied("the session token is missing or wrong")),
    }
    let declared = header_str(headers, "x-amz-content-sha256")
        .ok_or_else(|| S3Error::bad("InvalidRequest", "x-amz-content-sha256 is required"))?;
    let payload = if declared == "UNSIGNED-PAYLOAD" {
        Payload::Unsigned
    } else if declared.starts_with("STREAMING-") {
        return Err(S3Error::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "chunked (streaming) signatures are not supported",
        ));
    } else if declared.len() == 64 && declared.bytes().all(|b| b.is_ascii_hexdigit()) {
        Payload::Sha256(declared.to_ascii_lowercase())
    } else {
        return Err(S3Error::bad(
            "InvalidArgument",
            "a malformed x-amz-content-sha256",
        ));
    };
    let mut signed = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(denied(&format!("signed header {name} is missing")));
        }
        signed.push((name.to_string(), values.join(",")));
    }
    let expected = signature(
        &creds.secret,
        amz_date,
        method.as_str(),
        path,
        query,
        &signed,
        declared,
    );
    if !constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "the request signature does not match",
        ));
    }
    Ok((creds.organization_id, payload))
}

// ---- the endpoint ------------------------------------------------------

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn etag_of(data: &[u8]) -> String {
    format!("\"{}\"", &hex::encode(Sha256::digest(data))[..32])
}

fn new_upload_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// The declared length of a request's body: required, and at most
/// [`MAX_REQUEST_BYTES`] (checked before anything is read).
fn declared_length(headers: &HeaderMap) -> Result<usize, S3Error> {
    let len: usize = header_str(headers, "content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            S3Error::new(
                StatusCode::LENGTH_REQUIRED,
                "MissingContentLength",
                "Content-Length is required",
            )
        })?;
    if len > MAX_REQUEST_BYTES {
        return Err(S3Error::bad(
            "EntityTooLarge",
            format!(
                "one request may carry at most {MAX_REQUEST_BYTES} bytes; use a multipart upload"
            ),
        ));
    }
    Ok(len)
}

/// Reads the body (at most [`MAX_REQUEST_BYTES`], memory for it reserved
/// in [`IN_FLIGHT_MIB`] meanwhile) and checks it against the declared
/// payload hash.
async fn read_body(body: Body, len: usize, payload: &Payload) -> Result<Vec<u8>, S3Error> {
    use http_body_util::BodyExt;
    let mib = (len.div_ceil(1 << 20)).max(1) as u32;
    let _reserved = IN_FLIGHT_MIB
        .acquire_many(mib)
        .await
        .map_err(|_| S3Error::new(StatusCode::SERVICE_UNAVAILABLE, "SlowDown", "shutting down"))?;
    let bytes = http_body_util::Limited::new(body, MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                S3Error::bad(
                    "EntityTooLarge",
                    format!("one request may carry at most {MAX_REQUEST_BYTES} bytes; use a multipart upload"),
                )
            } else {
                S3Error::bad("IncompleteBody", "the body could not be read")
            }
        })?
        .to_bytes();
    if let Payload::Sha256(want) = payload {
        if hex::encode(Sha256::digest(&bytes)) != *want {
            return Err(S3Error::bad(
                "XAmzContentSHA256Mismatch",
                "the body does not hash to x-amz-content-sha256",
            ));
        }
    }
    Ok(bytes.to_vec())
}

/// Serves `{PATH}/…`: see the module doc.
pub async fn serve(State(s): State<AppState>, req: Request) -> Response {
    match handle(s, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(s: AppState, req: Request) -> Result<Response, S3Error> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let now = now_ms();
    let (org, payload) =
        authenticate(&s, &parts.method, &path, &query, &parts.headers, now / 1000).await?;
    let rest = path
        .strip_prefix(PATH)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or("");
    let (bucket, raw_key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket != BUCKET {
        return Err(S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            format!("no bucket {bucket:?}; push-access names {BUCKET:?}"),
        ));
    }
    let key = String::from_utf8(percent_decode(raw_key))
        .map_err(|_| S3Error::bad("InvalidArgument", "the key is not UTF-8"))?;
    let q = query_pairs(&query);
    let param = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if key.is_empty() {
        return match parts.method {
            Method::GET => {
                // ListObjectsV2 pages on: the continuation token is the last
                // key of the page before (opaque to clients), or start-after.
                let after = param("continuation-token").or(param("start-after"));
                list(
                    &s,
                    &org,
                    param("prefix").unwrap_or(""),
                    param("max-keys"),
                    after,
                    param("continuation-token"),
                )
                .await
            }
            Method::HEAD => Ok(StatusCode::OK.into_response()),
            _ => Err(S3Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "buckets cannot be changed here",
            )),
        };
    }
    if key.len() > 1024 || key.contains('\0') {
        return Err(S3Error::bad(
            "KeyTooLongError",
            "a key is at most 1024 bytes",
        ));
    }
    if !key.starts_with(&format!("{org}/")) {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!("these credentials reach keys under {org}/ only"),
        ));
    }
    match (parts.method.clone(), param("uploadId"), param("partNumber")) {
        (Method::HEAD, None, _) => head(&s, &org, &key).await,
        (Method::GET, None, _) => get(&s, &org, &key).await,
        (Method::PUT, Some(upload), Some(number)) => {
            if parts.headers.contains_key("x-amz-copy-source") {
                return Err(not_implemented("UploadPartCopy"));
            }
            let number: i64 = number
                .parse()
                .ok()
                .filter(|n| (1..=MAX_PARTS).contains(n))
                .ok_or_else(|| S3Error::bad("InvalidArgument", "partNumber must be 1 to 10000"))?;
            let len = declared_length(&parts.headers)?;
            check_quota(&s, &org, len).await?;
            let data = read_body(body, len, &payload).await?;
            put_part(&s, &org, &key, upload, number, data).await
        }
        (Method::PUT, None, None) => {
            if parts.headers.contains_key("x-amz-copy-source") {
                return Err(not_implemented("CopyObject"));
            }
            let len = declared_length(&parts.headers)?;
            check_quota(&s, &org, len).await?;
            let data = read_body(body, len, &payload).await?;
            put_object(&s, &org, &key, data, now).await
        }
        (Method::POST, None, _) if param("uploads").is_some() => {
            if s.store.open_uploads(&org).await? >= MAX_OPEN_UPLOADS {
                return Err(S3Error::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SlowDown",
                    format!("at most {MAX_OPEN_UPLOADS} uploads may be open at once"),
                ));
            }
            let id = new_upload_id();
            s.store
                .create_upload(&UploadRecord {
                    id: id.clone(),
                    organization_id: org.clone(),
                    object_key: key.clone(),
                    created_at: now,
                })
                .await?;
            Ok(xml(
                StatusCode::OK,
                format!(
                    "<InitiateMultipartUploadResult><Bucket>{BUCKET}</Bucket><Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
                    xml_escape(&key)
                ),
            ))
        }
        (Method::POST, Some(upload), _) => {
            let len = declared_length(&parts.headers)?;
            let data = read_body(body, len, &payload).await?;
            complete(&s, &org, &key, upload, &data, now).await
        }
        (Method::DELETE, Some(upload), _) => {
            let u = upload_of(&s, &org, &key, upload).await?;
            s.store.abort_upload(&u.id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::DELETE, None, _) => {
            s.store.delete_object(&org, &key).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(S3Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not an operation this endpoint serves",
        )),
    }
}

fn not_implemented(what: &str) -> S3Error {
    S3Error::new(
        StatusCode::NOT_IMPLEMENTED,
        "NotImplemented",
        format!("{what} is not supported"),
    )
}

fn no_such_key(key: &str) -> S3Error {
    S3Error::new(
        StatusCode::NOT_FOUND,
        "NoSuchKey",
        format!("no object {key}"),
    )
}

fn http_date(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Civil date from days (inverse of the algorithm in parse_amz_date).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{weekday}, {d:02} {month} {y} {:02}:{:02}:{:02} GMT",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    )
}

fn iso_date(ms: i64) -> String {
    // `Sun, 06 Dec 2026 10:45:12 GMT` → `2026-12-06T10:45:12.000Z`.
    let h = http_date(ms);
    let parts: Vec<&str> = h.split(' ').collect();
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])
    .unwrap_or(0)
        + 1;
    format!("{}-{month:02}-{}T{}.000Z", parts[3], parts[1], parts[4])
}

/// The headers of an object's HEAD and GET answers.
fn object_headers(o: &ObjectRecord) -> [(header::HeaderName, String); 4] {
    [
        (header::CONTENT_LENGTH, o.size_bytes.to_string()),
        (header::ETAG, o.etag.clone()),
        (header::LAST_MODIFIED, http_date(o.created_at)),
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
    ]
}

async fn head(s: &AppState, org: &str, key: &str) -> Result<Response, S3Error> {
    let o = s
        .store
        .object(org, key)
        .await?
        .ok_or_else(|| no_such_key(key))?;
    Ok((StatusCode::OK, object_headers(&o)).into_response())
}

async fn get(s: &AppState, org: &str, key: &str) -> Result<Response, S3Error> {
    let o = s
        .store
        .object(org, key)
        .await?
        .ok_or_else(|| no_such_key(key))?;
    let headers = object_headers(&o);
    let stream = object_stream(s.store.clone(), o);
    Ok((StatusCode::OK, headers, Body::from_stream(stream)).into_response())
}

/// An object's bytes, part by part, read from the store as they are sent.
pub fn object_stream(
    store: atoll_store::Store,
    o: ObjectRecord,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold((store, o, 0usize), |(store, o, i)| async move {
        let number = *o.parts.get(i)?;
        let item = match store.part_data(&o.upload_id, number).await {
            Ok(Some(data)) => Ok(bytes::Bytes::from(data)),
            Ok(None) => Err(std::io::Error::other(format!(
                "part {number} of {} is missing",
                o.object_key
            ))),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        Some((item, (store, o, i + 1)))
    })
}

async fn check_quota(s: &AppState, org: &str, adding: usize) -> Result<(), S3Error> {
    let used = s.store.object_bytes(org).await?;
    if used + adding as i64 > MAX_ORG_BYTES {
        return Err(S3Error::new(
            StatusCode::FORBIDDEN,
            "QuotaExceeded",
            format!("an organization may keep at most {MAX_ORG_BYTES} bytes of build contexts"),
        ));
    }
    Ok(())
}

async fn put_object(
    s: &AppState,
    org: &str,
    key: &str,
    data: Vec<u8>,
    now: i64,
) -> Result<Response, S3Error> {
    check_quota(s, org, data.len()).await?;
    let id = new_upload_id();
    s.store
        .create_upload(&UploadRecord {
            id: id.clone(),
            organization_id: org.to_string(),
            object_key: key.to_string(),
            created_at: now,
        })
        .await?;
    let etag = etag_of(&data);
    s.store.put_part(&id, 1, &etag, &data).await?;
    s.store
        .complete_upload(
            &ObjectRecord {
                organization_id: org.to_string(),
                object_key: key.to_string(),
                upload_id: id,
                parts: vec![1],
                size_bytes: data.len() as i64,
                etag: etag.clone(),
                sha256: hex::encode(Sha256::digest(&data)),
                created_at: now,
                last_used_at: now,
            },
            &[(1, etag.clone())],
        )
        .await?;
    Ok((StatusCode::OK, [(header::ETAG, etag)]).into_response())
}

async fn upload_of(s: &AppState, org: &str, key: &str, id: &str) -> Result<UploadRecord, S3Error> {
    s.store
        .upload(id)
        .await?
        .filter(|u| u.organization_id == org && u.object_key == key)
        .ok_or_else(|| {
            S3Error::new(
                StatusCode::NOT_FOUND,
                "NoSuchUpload",
                "no such upload (it was completed, aborted, or never begun)",
            )
        })
}

async fn put_part(
    s: &AppState,
    org: &str,
    key: &str,
    upload: &str,
    number: i64,
    data: Vec<u8>,
) -> Result<Response, S3Error> {
    let u = upload_of(s, org, key, upload).await?;
    check_quota(s, org, data.len()).await?;
    let etag = etag_of(&data);
    s.store.put_part(&u.id, number, &etag, &data).await?;
    Ok((StatusCode::OK, [(header::ETAG, etag)]).into_response())
}

/// The `(PartNumber, ETag)` pairs of a CompleteMultipartUpload body.
fn parse_complete(body: &str) -> Result<Vec<(i64, String)>, S3Error> {
    let malformed = || S3Error::bad("MalformedXML", "a malformed CompleteMultipartUpload body");
    let tag = |block: &str, name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = block.find(&open)? + open.len();
        let end = block[start..].find(&close)? + start;
        Some(xml_unescape(block[start..end].trim()))
    };
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("<Part>") {
        let after = &rest[i + "<Part>".len()..];
        let end = after.find("</Part>").ok_or_else(malformed)?;
        let block = &after[..end];
        let number: i64 = tag(block, "PartNumber")
            .and_then(|n| n.parse().ok())
            .ok_or_else(malformed)?;
        let etag = tag(block, "ETag").ok_or_else(malformed)?;
        parts.push((number, etag));
        if parts.len() as i64 > MAX_PARTS {
            return Err(malformed());
        }
        rest = &after[end..];
    }
    if parts.is_empty() {
        return Err(malformed());
    }
    Ok(parts)
}

async fn complete(
    s: &AppState,
    org: &str,
    key: &str,
    upload: &str,
    body: &[u8],
    now: i64,
) -> Result<Response, S3Error> {
    let u = upload_of(s, org, key, upload).await?;
    let listed = parse_complete(&String::from_utf8_lossy(body))?;
    let stored = s.store.parts(&u.id).await?;
    let mut size = 0i64;
    let mut previous = 0;
    let mut expected = Vec::new();
    for (number, etag) in &listed {
        if *number <= previous {
            return Err(S3Error::bad(
                "InvalidPartOrder",
                "parts must be listed in ascending order",
            ));
        }
        previous = *number;
        let part = stored
            .iter()
            .find(|p| p.part_number == *number)
            .filter(|p| p.etag.trim_matches('"') == etag.trim_matches('"'))
            .ok_or_else(|| {
                S3Error::bad(
                    "InvalidPart",
                    format!("part {number} was not uploaded as listed"),
                )
            })?;
        size += part.size_bytes;
        expected.push((*number, part.etag.clone()));
    }
    if size > MAX_OBJECT_BYTES {
        s.store.abort_upload(&u.id).await?;
        return Err(S3Error::bad(
            "EntityTooLarge",
            format!("an object is at most {MAX_OBJECT_BYTES} bytes"),
        ));
    }
    let numbers: Vec<i64> = listed.iter().map(|(n, _)| *n).collect();
    let mut hash = Sha256::new();
    for n in &numbers {
        let data = s
            .store
            .part_data(&u.id, *n)
            .await?
            .ok_or_else(|| S3Error::bad("InvalidPart", format!("part {n} vanished")))?;
        hash.update(&data);
    }
    let sha256 = hex::encode(hash.finalize());
    let etag = format!("\"{}-{}\"", &sha256[..32], numbers.len());
    s.store
        .complete_upload(
            &ObjectRecord {
                organization_id: org.to_string(),
                object_key: key.to_string(),
                upload_id: u.id.clone(),
                parts: numbers,
                size_bytes: size,
                etag: etag.clone(),
                sha256,
                created_at: now,
                last_used_at: now,
            },
            &expected,
        )
        .await?;
    Ok(xml(
        StatusCode::OK,
        format!(
            "<CompleteMultipartUploadResult><Bucket>{BUCKET}</Bucket><Key>{}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>",
            xml_escape(key),
            xml_escape(&etag)
        ),
    ))
}

async fn list(
    s: &AppState,
    org: &str,
    prefix: &str,
    max_keys: Option<&str>,
    after: Option<&str>,
    token: Option<&str>,
) -> Result<Response, S3Error> {
    let max: i64 = match max_keys {
        Some(m) => m
            .parse()
            .ok()
            .filter(|m| (0..=1000).contains(m))
            .ok_or_else(|| S3Error::bad("InvalidArgument", "max-keys must be 0 to 1000"))?,
        None => 1000,
    };
    // Only the organization's own keys are listed.
    // One more than asked for tells whether there is a next page.
    let mut objects = if prefix.starts_with(&format!("{org}/")) {
        s.store
            .list_objects(org, prefix, after.unwrap_or(""), max + 1)
            .await?
    } else {
        Vec::new()
    };
    let truncated = objects.len() as i64 > max;
    objects.truncate(max as usize);
    let mut body = format!(
        "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{BUCKET}</Name><Prefix>{}</Prefix><KeyCount>{}</KeyCount><MaxKeys>{max}</MaxKeys><IsTruncated>{truncated}</IsTruncated>",
        xml_escape(prefix),
        objects.len()
    );
    if let Some(t) = token {
        body.push_str(&format!(
            "<ContinuationToken>{}</ContinuationToken>",
            xml_escape(t)
        ));
    }
    if truncated {
        if let Some(last) = objects.last() {
            body.push_str(&format!(
                "<NextContinuationToken>{}</NextContinuationToken>",
                xml_escape(&last.object_key)
            ));
        }
    }
    for o in &objects {
        body.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            xml_escape(&o.object_key),
            iso_date(o.created_at),
            xml_escape(&o.etag),
            o.size_bytes
        ));
    }
    body.push_str("</ListBucketResult>");
    Ok(xml(StatusCode::OK, body))
}

/// The key the SDKs upload a context with hash `hash` to.
pub fn context_key(org: &str, hash: &str) -> String {
    format!("{org}/{hash}/context.tar")
}

/// A context hash as the SDKs make them (an MD5, lowercase hex).
pub fn valid_context_hash(hash: &str) -> bool {
    hash.len() == 32 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl AppState {
    /// The sha256s of an organization's build contexts `hashes`, in order
    /// (marked used); 400 naming one not uploaded.
    pub(crate) async fn build_contexts(
        &self,
        org: &str,
        hashes: &[String],
    ) -> Result<Vec<ObjectRecord>, ApiError> {
        let mut out = Vec::new();
        for h in hashes {
            if !valid_context_hash(h) {
                return Err(ApiError::BadRequest(format!(
                    "contextHashes: {h:?} is not a context hash"
                )));
            }
            let o = self
                .store
                .object(org, &context_key(org, h))
                .await?
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "build context {h} was not uploaded (or was collected after {} days unused)",
                        OBJECT_TTL_MS / 86_400_000
                    ))
                })?;
            self.store
                .touch_object(org, &o.object_key, now_ms())
                .await?;
            out.push(o);
        }
        Ok(out)
    }

    /// Sends the contexts a runtime lacks to it.
    pub(crate) async fn ship_contexts(
        &self,
        rt: &std::sync::Arc<dyn atoll_runtime_api::Runtime>,
        contexts: &[ObjectRecord],
    ) -> Result<(), ApiError> {
        for o in contexts {
            if rt.has_build_context(&o.sha256).await? {
                continue;
            }
            let stream = object_stream(self.store.clone(), o.clone());
            let reader = tokio_util::io::StreamReader::new(Box::pin(stream));
            rt.put_build_context(&o.sha256, Box::new(reader)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_and_http_dates_agree() {
        let t = parse_amz_date("20261206T104512Z").unwrap();
        assert_eq!(http_date(t * 1000), "Sun, 06 Dec 2026 10:45:12 GMT");
        assert_eq!(iso_date(t * 1000), "2026-12-06T10:45:12.000Z");
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert!(parse_amz_date("2026-12-06T10:45:12Z").is_none());
        assert!(parse_amz_date("20261306T104512Z").is_none());
    }

    #[test]
    fn canonical_queries_are_sorted_and_strictly_encoded() {
        assert_eq!(canonical_query("uploads"), "uploads=");
        assert_eq!(
            canonical_query("uploadId=a%2Fb&partNumber=2"),
            "partNumber=2&uploadId=a%2Fb"
        );
        assert_eq!(
            canonical_query("prefix=o%2Fh%2F&list-type=2&max-keys=1"),
            "list-type=2&max-keys=1&prefix=o%2Fh%2F"
        );
    }

    #[test]
    fn complete_bodies_parse_with_or_without_a_namespace() {
        let plain = "<CompleteMultipartUpload><Part><ETag>\"ab\"</ETag><PartNumber>1</PartNumber></Part>\
                     <Part><PartNumber>2</PartNumber><ETag>&quot;cd&quot;</ETag></Part></CompleteMultipartUpload>";
        assert_eq!(
            parse_complete(plain).unwrap(),
            vec![(1, "\"ab\"".to_string()), (2, "\"cd\"".to_string())]
        );
        assert!(parse_complete("<CompleteMultipartUpload/>").is_err());
        assert!(parse_complete("<Part><PartNumber>x</PartNumber></Part>").is_err());
    }

    #[test]
    fn authorization_headers_parse() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AK/20261206/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc",
        )
        .unwrap();
        assert_eq!(a.access_key, "AK");
        assert_eq!(a.signed_headers, vec!["host", "x-amz-date"]);
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=AK/x/y, Signature=abc").is_none());
    }
}
