//! What an API key may do. Keys made with `POST /api/api-keys` carry a
//! list of Daytona's permission names; owner and admin keys carry none
//! and may do everything. Every authenticated request, on `/api` and on
//! the toolbox, is checked here against one table from its method and
//! path ([`required`]), so no handler can forget to check.
//!
//! Reads need no permission (but volumes', and secrets need
//! `manage:secrets` for anything); changing a sandbox, running anything
//! in one through the toolbox, getting a preview token (it opens the
//! sandbox's apps and web terminal) or its preview signing key needs
//! `write:sandboxes`; deleting one, `delete:sandboxes`; and so on. What a
//! body adds is checked by its handler with `Principal::require`: a
//! sandbox made with secrets needs `manage:secrets`, with volumes
//! `read:volumes` (and `write:volumes` unless mounted read-only).

use axum::http::Method;

/// Every permission name Daytona's `CreateApiKey` accepts.
pub const ALL: &[&str] = &[
    "write:registries",
    "delete:registries",
    "write:snapshots",
    "delete:snapshots",
    "write:sandboxes",
    "delete:sandboxes",
    "read:volumes",
    "write:volumes",
    "delete:volumes",
    "write:regions",
    "delete:regions",
    "read:runners",
    "write:runners",
    "delete:runners",
    "read:audit_logs",
    "manage:api_keys",
    "manage:secrets",
    "read:limits",
    "manage:sso",
    "read:billing",
    "manage:billing",
];

/// The permissions of which a request needs one (empty: any valid key).
/// `path` is the request's whole path (`/api/sandbox/…`, `/toolbox/…`).
pub fn required(method: &Method, path: &str) -> &'static [&'static str] {
    let read = *method == Method::GET || *method == Method::HEAD;
    if path.starts_with("/toolbox/") {
        return &["write:sandboxes"];
    }
    let Some(p) = path.strip_prefix("/api") else {
        return &[];
    };
    let segments: Vec<&str> = p.trim_matches('/').split('/').collect();
    let delete = *method == Method::DELETE;
    match segments.as_slice() {
        // Preview tokens open the sandbox's apps and its web terminal.
        ["sandbox", _, "signing-key", ..] | ["sandbox", _, "ports", ..] => &["write:sandboxes"],
        ["sandbox", "ssh-access", "validate"] => &[],
        ["sandbox", _] if delete => &["delete:sandboxes"],
        ["sandbox", ..] | ["warm-pools", ..] if !read => &["write:sandboxes"],
        ["snapshots", _] if delete => &["delete:snapshots"],
        ["snapshots", ..] if !read => &["write:snapshots"],
        ["docker-registry", _] if delete => &["delete:registries"],
        ["docker-registry", ..] if !read => &["write:registries"],
        // Uploads are for builds: of snapshots, or of sandboxes from a
        // Dockerfile.
        ["object-storage", ..] => &["write:snapshots", "write:sandboxes"],
        ["volumes", ..] if read => &["read:volumes"],
        ["volumes", _] if delete => &["delete:volumes"],
        ["volumes", ..] => &["write:volumes"],
        ["secret", ..] => &["manage:secrets"],
        ["api-keys", "current"] if read => &[],
        ["api-keys", ..] => &["manage:api_keys"],
        _ => &[],
    }
}

/// Whether a key limited to `granted` (`None`: unlimited) may make a
/// request that needs one of `needed`.
pub fn allows(granted: Option<&[String]>, needed: &[&str]) -> bool {
    match granted {
        None => true,
        Some(_) if needed.is_empty() => true,
        Some(g) => needed.iter().any(|n| g.iter().any(|h| h == n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_what_each_request_needs() {
        let cases: &[(Method, &str, &[&str])] = &[
            (Method::GET, "/api/sandbox", &[]),
            (Method::GET, "/api/sandbox/abc", &[]),
            (Method::POST, "/api/sandbox", &["write:sandboxes"]),
            (Method::POST, "/api/sandbox/abc/start", &["write:sandboxes"]),
            (Method::DELETE, "/api/sandbox/abc", &["delete:sandboxes"]),
            (
                Method::DELETE,
                "/api/sandbox/abc/ssh-access",
                &["write:sandboxes"],
            ),
            (
                Method::GET,
                "/api/sandbox/abc/signing-key",
                &["write:sandboxes"],
            ),
            (Method::GET, "/api/sandbox/ssh-access/validate", &[]),
            (
                Method::GET,
                "/api/sandbox/abc/ports/3000/preview-url",
                &["write:sandboxes"],
            ),
            (
                Method::GET,
                "/api/sandbox/abc/ports/3000/signed-preview-url",
                &["write:sandboxes"],
            ),
            (Method::POST, "/api/api-keys/current", &["manage:api_keys"]),
            (
                Method::POST,
                "/toolbox/abc/process/execute",
                &["write:sandboxes"],
            ),
            (
                Method::GET,
                "/toolbox/abc/files/download",
                &["write:sandboxes"],
            ),
            (Method::POST, "/api/snapshots", &["write:snapshots"]),
            (Method::DELETE, "/api/snapshots/s", &["delete:snapshots"]),
            (Method::GET, "/api/snapshots", &[]),
            (Method::GET, "/api/volumes", &["read:volumes"]),
            (Method::POST, "/api/volumes", &["write:volumes"]),
            (Method::DELETE, "/api/volumes/v", &["delete:volumes"]),
            (Method::DELETE, "/api/volumes/v/files", &["write:volumes"]),
            (Method::GET, "/api/secret", &["manage:secrets"]),
            (Method::GET, "/api/api-keys", &["manage:api_keys"]),
            (Method::GET, "/api/api-keys/current", &[]),
            (Method::DELETE, "/api/api-keys/ci", &["manage:api_keys"]),
            (Method::GET, "/api/users/me", &[]),
            (
                Method::PATCH,
                "/api/docker-registry/r",
                &["write:registries"],
            ),
            (
                Method::DELETE,
                "/api/docker-registry/r",
                &["delete:registries"],
            ),
        ];
        for (m, path, want) in cases {
            assert_eq!(required(m, path), *want, "{m} {path}");
        }
    }

    #[test]
    fn unlimited_keys_may_do_anything_and_limited_ones_what_they_hold() {
        let ro: Vec<String> = vec![];
        let rw = vec!["write:sandboxes".to_string()];
        assert!(allows(None, &["delete:sandboxes"]));
        assert!(allows(Some(&ro), &[]));
        assert!(!allows(Some(&ro), &["write:sandboxes"]));
        assert!(allows(Some(&rw), &["write:snapshots", "write:sandboxes"]));
        assert!(!allows(Some(&rw), &["delete:sandboxes"]));
    }
}
