//! `process/code-run`: run a snippet with the language's interpreter, the
//! code on stdin, under the same user, env, timeout and output rules as
//! `process/execute`. TypeScript is transpiled (no type check, like
//! Daytona's `ts-node -T`) by the image's `typescript` module (Debian's
//! node-typescript) inside the node process that then runs it
//! ([`TS_RUNNER`]). Python runs under a small driver ([`PYTHON_DRIVER`])
//! that behaves like `python3 -u -` and reports matplotlib figures as chart
//! artifacts on a side channel (see `charts`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::charts::{self, Chart, CHART_BYTES_LIMIT};
use super::plan::{self, ExecPlan, StdinSource};
use super::run::{run, run_with_side_channel, Outcome};
use super::{ProcessContext, ProcessError, OUTPUT_LIMIT};

/// The Python driver: `python3 -u -c PYTHON_DRIVER argv...` with the code on
/// stdin runs it as `python3 -u - argv...` would and writes a JSON line per
/// matplotlib figure shown (or left open at the end) to fd 3.
pub const PYTHON_DRIVER: &str = include_str!("code_run.py");

/// What a code run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeRunOutput {
    pub outcome: Outcome,
    /// Charts of the figures the code showed (Python with matplotlib).
    pub charts: Vec<Chart>,
}

/// Languages `code-run` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    JavaScript,
    TypeScript,
}

impl Language {
    /// The sandbox's `code-toolbox-language` label value; empty means python
    /// (the SDK's default).
    pub fn parse(s: &str) -> Result<Self, ProcessError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "python" | "python3" | "py" => Ok(Language::Python),
            "javascript" | "js" | "node" => Ok(Language::JavaScript),
            "typescript" | "ts" => Ok(Language::TypeScript),
            _ => Err(ProcessError::UnsupportedLanguage(s.to_string())),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CodeRunParams {
    pub code: String,
    pub language: String,
    pub argv: Vec<String>,
    pub envs: BTreeMap<String, String>,
    /// Seconds; `None` or 0: no timeout.
    pub timeout: Option<u64>,
}

/// Runs the snippet in the work dir.
pub async fn code_run(
    ctx: &ProcessContext,
    params: CodeRunParams,
) -> Result<CodeRunOutput, ProcessError> {
    let language = Language::parse(&params.language)?;
    if params.argv.iter().any(|a| a.contains('\0')) {
        return Err(ProcessError::InvalidRequest(
            "argv contains a NUL byte".into(),
        ));
    }
    let env = plan::command_env(ctx, &params.envs)?;
    let base = ExecPlan {
        program: String::new(),
        args: Vec::new(),
        cwd: plan::checked_cwd(&ctx.work_dir, None)?,
        credentials: plan::credentials(ctx),
        stdin: StdinSource::Null,
        script: None,
        timeout_secs: plan::timeout_secs(params.timeout),
        env,
    };
    let without_charts = |outcome| CodeRunOutput {
        outcome,
        charts: Vec::new(),
    };
    match language {
        Language::Python => {
            let plan = python_plan(base, &params);
            let (outcome, side) =
                run_with_side_channel(&plan, OUTPUT_LIMIT, CHART_BYTES_LIMIT).await?;
            Ok(CodeRunOutput {
                outcome,
                charts: charts::parse(&side),
            })
        }
        Language::JavaScript => {
            let plan = stdin_plan(base, "node", &["-"], &params);
            run(&plan, OUTPUT_LIMIT).await.map(without_charts)
        }
        Language::TypeScript => typescript(base, &params).await.map(without_charts),
    }
}

/// `python3 -u -c PYTHON_DRIVER argv...`, the code on stdin.
fn python_plan(base: ExecPlan, params: &CodeRunParams) -> ExecPlan {
    stdin_plan(base, "python3", &["-u", "-c", PYTHON_DRIVER], params)
}

/// `program fixed_args... argv...` with the code on stdin.
fn stdin_plan(base: ExecPlan, program: &str, fixed: &[&str], params: &CodeRunParams) -> ExecPlan {
    ExecPlan {
        program: program.into(),
        args: fixed
            .iter()
            .map(|a| a.to_string())
            .chain(params.argv.iter().cloned())
            .collect(),
        stdin: StdinSource::Bytes(params.code.clone().into_bytes()),
        ..base
    }
}

/// Finds `program` on a `PATH` value.
pub fn find_on_path(program: &str, path: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// The node script behind `typescript`: reads the code from stdin,
/// transpiles it with the `typescript` module (syntax errors are reported
/// and exit 1; types are not checked), and runs it as the main module of a
/// file in the cwd, so `require` resolves from the cwd like `node -` does
/// for JavaScript. Stack traces point into the TypeScript source.
pub const TS_RUNNER: &str = r#"
const Module = require('module');
const path = require('path');
let ts;
try {
  ts = require('typescript');
} catch (e) {
  process.stderr.write('TypeScript is not available in this sandbox: the typescript module was not found (' + e.message + ')\n');
  process.exit(1);
}
const file = path.join(process.cwd(), '[code-run].ts');
const source = require('fs').readFileSync(0, 'utf8');
const out = ts.transpileModule(source, {
  fileName: file,
  reportDiagnostics: true,
  compilerOptions: {
    module: ts.ModuleKind.CommonJS,
    target: ts.ScriptTarget.ES2020,
    esModuleInterop: true,
    inlineSourceMap: true,
    inlineSources: true,
  },
});
if (out.diagnostics && out.diagnostics.length > 0) {
  process.stderr.write(ts.formatDiagnostics(out.diagnostics, {
    getCanonicalFileName: (f) => f,
    getCurrentDirectory: () => process.cwd(),
    getNewLine: () => '\n',
  }));
  process.exit(1);
}
if (process.setSourceMapsEnabled) process.setSourceMapsEnabled(true);
process.argv = [process.argv[0], file, ...process.argv.slice(1)];
const main = new Module(file, null);
main.id = '.';
main.filename = file;
main.paths = Module._nodeModulePaths(process.cwd());
process.mainModule = main;
main._compile(out.outputText, file);
main.loaded = true;
"#;

async fn typescript(base: ExecPlan, params: &CodeRunParams) -> Result<Outcome, ProcessError> {
    let path_var = base.env.get("PATH").cloned().unwrap_or_default();
    if find_on_path("node", &path_var).is_none() {
        return Ok(Outcome {
            exit_code: -1,
            output:
                "TypeScript is not available in this sandbox: node (Node.js) was not found on PATH"
                    .into(),
        });
    }
    let plan = stdin_plan(base, "node", &["-e", TS_RUNNER, "--"], params);
    run(&plan, OUTPUT_LIMIT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_languages() {
        assert_eq!(Language::parse("").ok(), Some(Language::Python));
        assert_eq!(Language::parse("Python").ok(), Some(Language::Python));
        assert_eq!(
            Language::parse("javascript").ok(),
            Some(Language::JavaScript)
        );
        assert_eq!(
            Language::parse("typescript").ok(),
            Some(Language::TypeScript)
        );
        assert!(Language::parse("cobol").is_err());
    }

    #[test]
    fn finds_programs_on_path() {
        assert!(find_on_path("sh", "/nonexistent:/bin:/usr/bin").is_some());
        assert!(find_on_path("surely-not-a-program-xyz", "/bin:/usr/bin").is_none());
        assert!(find_on_path("sh", "").is_none());
    }

    #[test]
    fn typescript_plan_runs_the_runner_with_code_on_stdin() {
        let base = ExecPlan {
            program: String::new(),
            args: vec![],
            env: BTreeMap::new(),
            cwd: "/".into(),
            credentials: None,
            stdin: StdinSource::Null,
            script: None,
            timeout_secs: None,
        };
        let params = CodeRunParams {
            code: "const x: number = 1".into(),
            argv: vec!["--flag".into()],
            ..Default::default()
        };
        let plan = stdin_plan(base, "node", &["-e", TS_RUNNER, "--"], &params);
        assert_eq!(plan.args, vec!["-e", TS_RUNNER, "--", "--flag"]);
        assert_eq!(
            plan.stdin,
            StdinSource::Bytes(b"const x: number = 1".to_vec())
        );
    }

    #[test]
    fn python_plan_has_code_on_stdin() {
        let base = ExecPlan {
            program: String::new(),
            args: vec![],
            env: BTreeMap::new(),
            cwd: "/".into(),
            credentials: None,
            stdin: StdinSource::Null,
            script: None,
            timeout_secs: None,
        };
        let params = CodeRunParams {
            code: "print(1)".into(),
            argv: vec!["a".into()],
            ..Default::default()
        };
        let plan = python_plan(base, &params);
        assert_eq!(plan.program, "python3");
        assert_eq!(plan.args, vec!["-u", "-c", PYTHON_DRIVER, "a"]);
        assert_eq!(plan.stdin, StdinSource::Bytes(b"print(1)".to_vec()));
        assert_eq!(plan.script, None, "fd 3 is the chart channel");
    }
}
