//! Dockerfile parsing for the builder: one stage, the instructions the
//! SDKs' `Image` builder writes (`FROM`, `RUN`, `ENV`, `ARG`, `WORKDIR`,
//! `USER`, `ENTRYPOINT`, `CMD`, `LABEL`, `EXPOSE`, `COPY`, `ADD`), line
//! continuations and comments, `$VAR`/`${VAR}` (with `:-` defaults)
//! expanded from `ARG`s and `ENV`s where Docker expands them.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// A command as a shell line (`RUN echo hi`) or an argv (`RUN ["a", "b"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

impl Command {
    /// The argv to run: a shell line runs under `/bin/sh -c`.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Exec(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From {
        image: String,
    },
    Run(Command),
    Env(Vec<(String, String)>),
    Arg {
        name: String,
        default: Option<String>,
    },
    Workdir(String),
    User(String),
    Entrypoint(Command),
    Cmd(Command),
    Label(Vec<(String, String)>),
    Expose(Vec<String>),
    Copy {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
    },
}

/// One parsed instruction with its source line and its text as written
/// (after expansion: what the layer cache keys on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    pub text: String,
    pub instruction: Instruction,
}

/// Parses `content`; `build_args` override `ARG` defaults.
pub fn parse(
    content: &str,
    build_args: &BTreeMap<String, String>,
) -> Result<Vec<Step>, ParseError> {
    let mut steps = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_from = false;
    for (line, raw) in logical_lines(content) {
        let err = |reason: String| ParseError { line, reason };
        let trimmed = raw.trim();
        let (keyword, rest) = match trimmed.split_once(char::is_whitespace) {
            Some((k, r)) => (k, r.trim()),
            None => (trimmed, ""),
        };
        let keyword = keyword.to_ascii_uppercase();
        if !seen_from && keyword != "FROM" && keyword != "ARG" {
            return Err(err(format!("{keyword} before FROM")));
        }
        let expanded = |s: &str| expand(s, &vars).map_err(|r| ParseError { line, reason: r });
        let instruction = match keyword.as_str() {
            "FROM" => {
                if seen_from {
                    return Err(err(
                        "multi-stage builds (a second FROM) are not supported".into()
                    ));
                }
                seen_from = true;
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                match words.as_slice() {
                    [image] => Instruction::From {
                        image: expanded(image)?,
                    },
                    [image, as_kw, _] if as_kw.eq_ignore_ascii_case("AS") => Instruction::From {
                        image: expanded(image)?,
                    },
                    _ => return Err(err("FROM takes one image".into())),
                }
            }
            "RUN" => {
                let rest = strip_flags(rest, line)?;
                Instruction::Run(command(rest, line)?)
            }
            "ENTRYPOINT" => Instruction::Entrypoint(command(rest, line)?),
            "CMD" => Instruction::Cmd(command(rest, line)?),
            "ENV" => {
                let pairs = key_values(rest, line)?
                    .into_iter()
                    .map(|(k, v)| Ok((k, expanded(&v)?)))
                    .collect::<Result<Vec<_>, ParseError>>()?;
                for (k, v) in &pairs {
                    vars.insert(k.clone(), v.clone());
                }
                Instruction::Env(pairs)
            }
            "ARG" => {
                let (name, default) = match rest.split_once('=') {
                    Some((n, d)) => (n.trim().to_string(), Some(unquote(d.trim()))),
                    None => (rest.to_string(), None),
                };
                if !valid_name(&name) {
                    return Err(err(format!("invalid ARG name {name:?}")));
                }
                let value = build_args.get(&name).cloned().or(default.clone());
                if let Some(v) = &value {
                    vars.entry(name.clone()).or_insert_with(|| v.clone());
                }
                Instruction::Arg {
                    name,
                    default: value,
                }
            }
            "WORKDIR" => {
                let dir = expanded(&unquote(rest))?;
                if dir.is_empty() {
                    return Err(err("WORKDIR needs a path".into()));
                }
                Instruction::Workdir(dir)
            }
            "USER" => {
                let user = expanded(rest)?;
                if user.is_empty() || user.contains(char::is_whitespace) {
                    return Err(err("USER takes one user[:group]".into()));
                }
                Instruction::User(user)
            }
            "LABEL" => Instruction::Label(key_values(rest, line)?),
            "EXPOSE" => Instruction::Expose(rest.split_whitespace().map(str::to_string).collect()),
            "COPY" | "ADD" => {
                let mut chown = None;
                let mut words = Vec::new();
                let rest = if rest.starts_with('[') {
                    match command(rest, line)? {
                        Command::Exec(v) => v,
                        Command::Shell(_) => unreachable!(),
                    }
                } else {
                    rest.split_whitespace().map(str::to_string).collect()
                };
                for w in rest {
                    if let Some(c) = w.strip_prefix("--chown=") {
                        chown = Some(c.to_string());
                    } else if w.starts_with("--from=") {
                        return Err(err("COPY --from (multi-stage) is not supported".into()));
                    } else if w.starts_with("--") {
                        continue; // --chmod, --link: not applied
                    } else {
                        words.push(expanded(&w)?);
                    }
                }
                let Some((dest, sources)) = words.split_last() else {
                    return Err(err(format!("{keyword} needs a source and a destination")));
                };
                if sources.is_empty() {
                    return Err(err(format!("{keyword} needs a source and a destination")));
                }
                if keyword == "ADD" && sources.iter().any(|s| s.contains("://")) {
                    return Err(err("ADD of a URL is not supported".into()));
                }
                Instruction::Copy {
                    sources: sources.to_vec(),
                    dest: dest.clone(),
                    chown,
                }
            }
            "SHELL" | "ONBUILD" | "HEALTHCHECK" | "STOPSIGNAL" | "VOLUME" | "MAINTAINER" => {
                return Err(err(format!("{keyword} is not supported")))
            }
            other => return Err(err(format!("unknown instruction {other}"))),
        };
        steps.push(Step {
            line,
            text: format!("{keyword} {rest}"),
            instruction,
        });
    }
    if !seen_from {
        return Err(ParseError {
            line: 0,
            reason: "no FROM".into(),
        });
    }
    Ok(steps)
}

/// Lines with continuations joined and comments dropped, with the number
/// of the line each starts on.
fn logical_lines(content: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, line) in content.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('#') || (current.is_empty() && t.is_empty()) {
            continue;
        }
        if current.is_empty() {
            start = i + 1;
        }
        match t.strip_suffix('\\') {
            Some(cont) => {
                current.push_str(cont);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                out.push((start, std::mem::take(&mut current)));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push((start, current));
    }
    out
}

fn strip_flags(rest: &str, line: usize) -> Result<&str, ParseError> {
    let mut r = rest;
    while let Some(after) = r.strip_prefix("--") {
        let (flag, tail) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
        if !(flag.starts_with("network=") || flag.starts_with("security=")) {
            return Err(ParseError {
                line,
                reason: format!("RUN --{flag} is not supported"),
            });
        }
        r = tail.trim_start();
    }
    Ok(r)
}

fn command(rest: &str, line: usize) -> Result<Command, ParseError> {
    if rest.starts_with('[') {
        let v: Vec<String> = serde_json::from_str(rest).map_err(|e| ParseError {
            line,
            reason: format!("exec form is not a JSON list of strings: {e}"),
        })?;
        if v.is_empty() {
            return Err(ParseError {
                line,
                reason: "an empty command".into(),
            });
        }
        Ok(Command::Exec(v))
    } else if rest.is_empty() {
        Err(ParseError {
            line,
            reason: "an empty command".into(),
        })
    } else {
        Ok(Command::Shell(rest.to_string()))
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !n.as_bytes()[0].is_ascii_digit()
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2
        && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')))
    {
        s[1..s.len() - 1].replace("\\\"", "\"")
    } else {
        s.to_string()
    }
}

/// `k=v k2="v 2"` or the legacy `k v w` (one pair).
fn key_values(rest: &str, line: usize) -> Result<Vec<(String, String)>, ParseError> {
    let bad = |reason: &str| ParseError {
        line,
        reason: reason.to_string(),
    };
    let first = rest.split_whitespace().next().unwrap_or_default();
    if !first.contains('=') {
        let (k, v) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        if !valid_name(k) {
            return Err(bad("invalid variable name"));
        }
        return Ok(vec![(k.to_string(), v.trim().to_string())]);
    }
    let mut out = Vec::new();
    let chars: Vec<char> = rest.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let mut key = String::new();
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            key.push(chars[i]);
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            return Err(bad("expected KEY=VALUE"));
        }
        i += 1;
        let mut value = String::new();
        let mut quote: Option<char> = None;
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) if c == '\\' && i + 1 < chars.len() => {
                    i += 1;
                    value.push(chars[i]);
                }
                Some(_) => value.push(c),
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c.is_whitespace() => break,
                None if c == '\\' && i + 1 < chars.len() => {
                    i += 1;
                    value.push(chars[i]);
                }
                None => value.push(c),
            }
            i += 1;
        }
        if quote.is_some() {
            return Err(bad("unterminated quote"));
        }
        let key = key.trim_matches('"').to_string();
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Expands `$VAR`, `${VAR}` and `${VAR:-default}` from `vars`; `\$` is a
/// literal dollar. An unknown variable is empty (Docker's behaviour).
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{') {
            let end = chars[i + 2..]
                .iter()
                .position(|&x| x == '}')
                .ok_or("unterminated ${")?;
            let inner: String = chars[i + 2..i + 2 + end].iter().collect();
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (inner.clone(), None),
            };
            match vars.get(&name).filter(|v| !v.is_empty()) {
                Some(v) => out.push_str(v),
                None => out.push_str(&default.unwrap_or_default()),
            }
            i += end + 3;
        } else {
            let name: String = chars[i + 1..]
                .iter()
                .take_while(|x| x.is_ascii_alphanumeric() || **x == '_')
                .collect();
            if name.is_empty() {
                out.push('$');
                i += 1;
            } else {
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
                i += 1 + name.len();
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_sdk_image_builder_writes_parses() {
        let df = "FROM python:3.12.10-slim-bookworm\n\
                  RUN pip install --upgrade pip \\\n    && echo done\n\
                  # a comment\n\
                  ENV A=1 B=\"two words\"\n\
                  ENV LEGACY value with spaces\n\
                  WORKDIR /app\n\
                  RUN [\"echo\", \"$A\"]\n\
                  USER daytona\n\
                  ENTRYPOINT [\"sleep\", \"infinity\"]\n\
                  CMD echo hi\n\
                  LABEL k=v\n\
                  EXPOSE 8080/tcp\n";
        let steps = parse(df, &BTreeMap::new()).unwrap();
        let ins: Vec<&Instruction> = steps.iter().map(|s| &s.instruction).collect();
        assert_eq!(
            ins[0],
            &Instruction::From {
                image: "python:3.12.10-slim-bookworm".into()
            }
        );
        assert_eq!(
            ins[1],
            &Instruction::Run(Command::Shell(
                "pip install --upgrade pip  && echo done".into()
            ))
        );
        assert_eq!(steps[1].line, 2);
        assert_eq!(
            ins[2],
            &Instruction::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into())
            ])
        );
        assert_eq!(
            ins[3],
            &Instruction::Env(vec![("LEGACY".into(), "value with spaces".into())])
        );
        assert_eq!(ins[4], &Instruction::Workdir("/app".into()));
        assert_eq!(
            ins[5],
            &Instruction::Run(Command::Exec(vec!["echo".into(), "$A".into()]))
        );
        assert_eq!(ins[6], &Instruction::User("daytona".into()));
        assert_eq!(
            ins[7],
            &Instruction::Entrypoint(Command::Exec(vec!["sleep".into(), "infinity".into()]))
        );
        assert_eq!(ins[8], &Instruction::Cmd(Command::Shell("echo hi".into())));
        assert_eq!(ins[9], &Instruction::Label(vec![("k".into(), "v".into())]));
        assert_eq!(ins[10], &Instruction::Expose(vec!["8080/tcp".into()]));
    }

    #[test]
    fn args_and_env_expand_where_docker_expands_them() {
        let mut args = BTreeMap::new();
        args.insert("VERSION".to_string(), "3.12".to_string());
        let df = "ARG VERSION=3.11\nARG BASE=python\nFROM ${BASE}:${VERSION}\nENV HOME_DIR=/home/x\n\
                  WORKDIR $HOME_DIR/app\nCOPY --chown=1000 a b ${HOME_DIR}/\nENV P=${MISSING:-dflt}\n";
        let steps = parse(df, &args).unwrap();
        assert_eq!(
            steps[2].instruction,
            Instruction::From {
                image: "python:3.12".into()
            }
        );
        assert_eq!(
            steps[4].instruction,
            Instruction::Workdir("/home/x/app".into())
        );
        assert_eq!(
            steps[5].instruction,
            Instruction::Copy {
                sources: vec!["a".into(), "b".into()],
                dest: "/home/x/".into(),
                chown: Some("1000".into())
            }
        );
        assert_eq!(
            steps[6].instruction,
            Instruction::Env(vec![("P".into(), "dflt".into())])
        );
    }

    #[test]
    fn unsupported_or_malformed_dockerfiles_name_the_line() {
        for (df, line) in [
            ("RUN echo\n", 1),
            ("FROM a\nFROM b\n", 2),
            ("FROM a\nRUN\n", 2),
            ("FROM a\nRUN [\"unterminated\"\n", 2),
            ("FROM a\nHEALTHCHECK CMD x\n", 2),
            ("FROM a\nBOGUS x\n", 2),
            ("FROM a\n\nCOPY --from=build /a /b\n", 3),
            ("FROM a\nADD https://x/y /z\n", 2),
            ("FROM a\nENV =x\n", 2),
            ("", 0),
        ] {
            let e = parse(df, &BTreeMap::new()).unwrap_err();
            assert_eq!(e.line, line, "{df:?}: {e}");
        }
    }
}
