//! Request extractors whose rejections are Daytona error bodies: JSON
//! bodies (bounded, strictly typed) and query strings with repeated keys.

use crate::error::ApiError;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

/// Largest JSON body the API accepts.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// A JSON request body; malformed or mistyped input is a 400 naming the problem.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_JSON_BODY as u64) {
            return Err(ApiError::PayloadTooLarge(format!(
                "request body of {} bytes is larger than the {MAX_JSON_BODY} bytes allowed",
                declared.unwrap_or_default()
            )));
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_JSON_BODY)
            .await
            .map_err(|_| {
                ApiError::PayloadTooLarge(format!(
                    "request body is larger than {MAX_JSON_BODY} bytes"
                ))
            })?;
        let bytes: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
    }
}

/// Decoded `key=value` pairs of a query string, repeated keys kept.
#[derive(Debug, Default, Clone)]
pub struct QueryPairs(pub Vec<(String, String)>);

impl QueryPairs {
    /// `sort` (one of `fields`, default `createdAt`) and whether `order`
    /// (default `desc`) is descending; 400 for anything else.
    pub fn sort_order<'a>(&'a self, fields: &[&str]) -> Result<(&'a str, bool), ApiError> {
        let sort = self.get("sort").unwrap_or("createdAt");
        if !fields.contains(&sort) {
            return Err(ApiError::BadRequest(format!(
                "sort must be one of {fields:?}"
            )));
        }
        let desc = match self.get("order").unwrap_or("desc") {
            "asc" => false,
            "desc" => true,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "order must be asc or desc, got {other:?}"
                )))
            }
        };
        Ok((sort, desc))
    }

    pub fn parse(query: Option<&str>) -> QueryPairs {
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned()
        };
        QueryPairs(
            query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key || k.strip_suffix("[]") == Some(key))
            .flat_map(|(_, v)| v.split(','))
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "query parameter {key} must be an integer, got {v:?}"
                    ))
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_encoded_keys() {
        let q = QueryPairs::parse(Some(
            "states=started&states=stopped&labels=%7B%22a%22%3A%22b%22%7D&limit=5&x",
        ));
        assert_eq!(q.all("states"), ["started", "stopped"]);
        assert_eq!(q.get("labels"), Some("{\"a\":\"b\"}"));
        assert_eq!(q.int("limit").unwrap(), Some(5));
        assert!(QueryPairs::parse(Some("limit=abc")).int("limit").is_err());
        assert_eq!(q.get("x"), None);
    }
}
