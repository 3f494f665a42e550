//! `POST /process/execute` and `POST /process/code-run`: wire DTOs and thin
//! handlers over `crate::process`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::JsonBody;
use super::AppState;
use crate::process::{self, CodeRunParams, ExecuteParams, Outcome};

/// `ExecuteRequest` of the toolbox API.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteRequest {
    command: String,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    envs: Option<BTreeMap<String, String>>,
    /// Seconds; absent, null, 0 or negative: no timeout.
    #[serde(default)]
    timeout: Option<i64>,
}

/// `ExecuteResponse`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteResponse {
    exit_code: i32,
    result: String,
}

/// `CodeRunRequest`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeRunRequest {
    code: String,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    envs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    timeout: Option<i64>,
}

/// `CodeRunResponse`: the charts of matplotlib figures the code showed are
/// in `artifacts.charts`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeRunResponse {
    exit_code: i32,
    result: String,
    artifacts: Artifacts,
}

#[derive(Debug, Serialize)]
pub struct Artifacts {
    charts: Vec<process::charts::Chart>,
}

fn seconds(timeout: Option<i64>) -> Option<u64> {
    timeout
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
}

pub async fn execute(
    State(st): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ExecuteRequest>,
) -> Result<Json<ExecuteResponse>, ApiError> {
    let params = ExecuteParams {
        command: req.command,
        cwd: req.cwd,
        envs: req.envs.unwrap_or_default(),
        timeout: seconds(req.timeout),
    };
    let Outcome { exit_code, output } = process::execute(&st.process, params).await?;
    Ok(Json(ExecuteResponse {
        exit_code,
        result: output,
    }))
}

pub async fn code_run(
    State(st): State<Arc<AppState>>,
    JsonBody(req): JsonBody<CodeRunRequest>,
) -> Result<Json<CodeRunResponse>, ApiError> {
    let params = CodeRunParams {
        code: req.code,
        language: req.language.unwrap_or_default(),
        argv: req.argv.unwrap_or_default(),
        envs: req.envs.unwrap_or_default(),
        timeout: seconds(req.timeout),
    };
    let process::CodeRunOutput {
        outcome: Outcome { exit_code, output },
        charts,
    } = process::code_run(&st.process, params).await?;
    Ok(Json(CodeRunResponse {
        exit_code,
        result: output,
        artifacts: Artifacts { charts },
    }))
}

/// `POST /env` (the SDK's `update_env`): changes the environment later
/// commands, sessions and PTYs start with; answers the variables set.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateEnvRequest {
    #[serde(default)]
    set: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    unset: Option<Vec<String>>,
    #[serde(default)]
    unset_value_prefix: Option<String>,
}

pub async fn update_env(
    State(st): State<Arc<AppState>>,
    JsonBody(req): JsonBody<UpdateEnvRequest>,
) -> Result<Json<std::collections::BTreeMap<String, String>>, ApiError> {
    let set = req.set.unwrap_or_default();
    let unset = req.unset.unwrap_or_default();
    st.process
        .sandbox_env
        .update(&set, &unset, req.unset_value_prefix.as_deref())
        .map(Json)
        .map_err(|e| match e {
            crate::process::env::EnvError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            crate::process::env::EnvError::Save { .. } => {
                ApiError::Fs(crate::fs::FsError::Internal(e.to_string()))
            }
        })
}
