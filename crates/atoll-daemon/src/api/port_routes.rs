//! `port` routes: which TCP ports something in the sandbox listens on, read
//! from the kernel's socket tables (`/proc/net/tcp`, `/proc/net/tcp6`) of
//! the sandbox's network namespace, as Daytona's `PortList` and
//! `IsPortInUseResponse`.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::error::ApiError;
use super::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/port", get(list))
        .route("/port/{port}/in-use", get(in_use))
}

#[derive(Debug, Serialize)]
struct PortList {
    ports: Vec<u16>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InUse {
    is_in_use: bool,
}

/// `st` of a listening socket in `/proc/net/tcp*`.
const TCP_LISTEN: &str = "0A";

/// Local ports of listening sockets in one `/proc/net/tcp*` table.
fn listening_ports(table: &str) -> impl Iterator<Item = u16> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if state != TCP_LISTEN {
            return None;
        }
        let port = local.rsplit_once(':')?.1;
        u16::from_str_radix(port, 16).ok()
    })
}

async fn listening() -> Result<BTreeSet<u16>, ApiError> {
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match tokio::fs::read_to_string(table).await {
            Ok(text) => ports.extend(listening_ports(&text)),
            // IPv6 may be off in the sandbox's namespace.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ApiError::Fs(crate::fs::FsError::Io {
                    op: "reading",
                    path: table.into(),
                    source: e,
                }))
            }
        }
    }
    Ok(ports)
}

async fn list() -> Result<Json<PortList>, ApiError> {
    Ok(Json(PortList {
        ports: listening().await?.into_iter().collect(),
    }))
}

async fn in_use(port: Result<Path<String>, PathRejection>) -> Result<Json<InUse>, ApiError> {
    let raw = port
        .map(|Path(p)| p)
        .map_err(|r| ApiError::BadRequest(format!("invalid path parameters: {}", r.body_text())))?;
    let port: u16 =
        raw.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            ApiError::BadRequest(format!("invalid port {raw:?}: expected 1-65535"))
        })?;
    Ok(Json(InUse {
        is_in_use: listening().await?.contains(&port),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_sockets_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0\n\
   1: 0100007F:A1B2 0100007F:1F40 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0\n\
   2: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 3 1 0\n";
        let ports: Vec<u16> = listening_ports(table).collect();
        assert_eq!(ports, [8000, 80]);
    }
}
