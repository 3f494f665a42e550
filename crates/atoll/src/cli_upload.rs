//! Uploads from the CLI to the server's S3-compatible object store, the
//! way the SDKs upload build contexts: credentials from `GET
//! /api/object-storage/push-access`, every request signed with Signature
//! V4 (the signature computed by the same function the server checks
//! with), objects under `{organizationId}/{hash}/context.tar`. What `sandbox
//! create --dockerfile` sends for COPY/ADD and `snapshot push` for an
//! image archive.
//!
//! An object is content-addressed (its hash is the first 32 hex digits
//! of its SHA-256): one already there is not sent again. Objects up to
//! [`SINGLE_PUT_MAX`] go in one PutObject, larger ones in 8 MiB parts.

use anyhow::{anyhow, bail, Context, Result};
use reqwest::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

use crate::cli::Client;

/// Largest object sent in one request (the server takes 16 MiB).
const SINGLE_PUT_MAX: u64 = 16 << 20;
/// Part size of a multipart upload.
const PART: usize = 8 << 20;

/// Credentials and where to send objects.
pub(crate) struct PushAccess {
    access_key: String,
    secret: String,
    session_token: String,
    storage_url: String,
    organization_id: String,
    bucket: String,
}

fn field(v: &Value, name: &str) -> Result<String> {
    v[name]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("push-access answer has no {name}"))
}

impl PushAccess {
    pub(crate) async fn get(c: &Client) -> Result<PushAccess> {
        let v = c
            .api(Method::GET, "/object-storage/push-access", None)
            .await
            .context("asking for upload credentials")?;
        Ok(PushAccess {
            access_key: field(&v, "accessKey")?,
            secret: field(&v, "secret")?,
            session_token: field(&v, "sessionToken")?,
            storage_url: field(&v, "storageUrl")?,
            organization_id: field(&v, "organizationId")?,
            bucket: field(&v, "bucket")?,
        })
    }

    fn url(&self, key: &str, query: &str) -> Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&format!(
            "{}/{}/{key}",
            self.storage_url.trim_end_matches('/'),
            self.bucket
        ))
        .context("the server's storage URL")?;
        if !query.is_empty() {
            url.set_query(Some(query));
        }
        Ok(url)
    }

    /// Sends one signed request; the response, or the S3 error as text.
    async fn send(
        &self,
        c: &Client,
        method: Method,
        key: &str,
        query: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::Response> {
        let url = self.url(key, query)?;
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let payload_hash = hex::encode(Sha256::digest(&body));
        let amz_date = amz_date(std::time::SystemTime::now());
        let headers = vec![
            ("host".to_string(), host),
            ("x-amz-content-sha256".to_string(), payload_hash.clone()),
            ("x-amz-date".to_string(), amz_date.clone()),
            (
                "x-amz-security-token".to_string(),
                self.session_token.clone(),
            ),
        ];
        let authorization = atoll_api::object_storage::authorization(
            &self.access_key,
            &self.secret,
            &amz_date,
            method.as_str(),
            url.path(),
            url.query().unwrap_or(""),
            &headers,
            &payload_hash,
        );
        let mut req = c
            .http()
            .request(method.clone(), url.clone())
            .header("authorization", authorization);
        for (name, value) in headers.iter().skip(1) {
            req = req.header(name.as_str(), value.as_str());
        }
        let resp = req.body(body).send().await.with_context(|| {
            format!(
                "reaching {url} (a server with its own CA: set {} to its ca.pem)",
                atoll_remote::tls::CA_FILE_ENV
            )
        })?;
        Ok(resp)
    }

    async fn checked(
        &self,
        c: &Client,
        method: Method,
        key: &str,
        query: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::Response> {
        let resp = self.send(c, method.clone(), key, query, body).await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let message = xml_field(&text, "Message").unwrap_or(text);
            bail!("uploading {key}: {method} answered {status}: {message}");
        }
        Ok(resp)
    }

    /// Uploads the file `f` (read from its start) unless an object of the
    /// same content is there; its context hash (what `contextHashes` and
    /// `imageArchive` name).
    pub(crate) async fn upload(
        &self,
        c: &Client,
        f: &mut std::fs::File,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<String> {
        let len = f.metadata()?.len();
        let hash = {
            f.seek(SeekFrom::Start(0))?;
            let mut h = Sha256::new();
            std::io::copy(f, &mut h)?;
            hex::encode(h.finalize())[..32].to_string()
        };
        let key = format!("{}/{hash}/context.tar", self.organization_id);
        let head = self.send(c, Method::HEAD, &key, "", Vec::new()).await?;
        if head.status().is_success() {
            progress(len, len);
            return Ok(hash);
        }
        if head.status() != reqwest::StatusCode::NOT_FOUND {
            bail!("looking for {key}: HEAD answered {}", head.status());
        }
        f.seek(SeekFrom::Start(0))?;
        if len <= SINGLE_PUT_MAX {
            let mut body = Vec::with_capacity(len as usize);
            f.read_to_end(&mut body)?;
            self.checked(c, Method::PUT, &key, "", body).await?;
            progress(len, len);
            return Ok(hash);
        }
        let created = self
            .checked(c, Method::POST, &key, "uploads=", Vec::new())
            .await?
            .text()
            .await?;
        let upload_id = xml_field(&created, "UploadId")
            .ok_or_else(|| anyhow!("no UploadId in the answer to create an upload"))?;
        let id_query =
            percent_encoding::utf8_percent_encode(&upload_id, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let mut parts = Vec::new();
        let mut sent = 0u64;
        let result: Result<()> = async {
            loop {
                let mut chunk = Vec::with_capacity(PART);
                f.by_ref().take(PART as u64).read_to_end(&mut chunk)?;
                if chunk.is_empty() {
                    break;
                }
                let n = parts.len() + 1;
                let size = chunk.len() as u64;
                let resp = self
                    .checked(
                        c,
                        Method::PUT,
                        &key,
                        &format!("partNumber={n}&uploadId={id_query}"),
                        chunk,
                    )
                    .await?;
                let etag = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| anyhow!("part {n} was answered without an ETag"))?
                    .to_string();
                parts.push(format!(
                    "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
                ));
                sent += size;
                progress(sent, len);
            }
            let body = format!(
                "<CompleteMultipartUpload>{}</CompleteMultipartUpload>",
                parts.concat()
            );
            self.checked(
                c,
                Method::POST,
                &key,
                &format!("uploadId={id_query}"),
                body.into_bytes(),
            )
            .await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            // Leave nothing half-made behind.
            let _ = self
                .send(
                    c,
                    Method::DELETE,
                    &key,
                    &format!("uploadId={id_query}"),
                    Vec::new(),
                )
                .await;
            return Err(e);
        }
        Ok(hash)
    }
}

/// `20261206T104512Z`.
fn amz_date(t: std::time::SystemTime) -> String {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    // 2026-12-06T10:45:12.000Z → 20261206T104512Z
    let iso = atoll_types::time::rfc3339_millis(ms);
    let digits: String = iso
        .get(..19)
        .unwrap_or_default()
        .chars()
        .filter(|ch| *ch != '-' && *ch != ':')
        .collect();
    format!("{digits}Z")
}

/// The text of the first `<name>` element of an S3 XML answer.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].to_string())
}

/// A tar (uncompressed, in a temporary file) of the build context `rel`
/// below `dir`: entries named as the Dockerfile names them (`lib/…` for
/// `COPY lib …`, the directory's contents at the root for `COPY . …`),
/// modes kept, symbolic links kept as links.
pub(crate) fn context_tar(dir: &std::path::Path, rel: &str) -> Result<std::fs::File> {
    // Resolved as the builder (and Docker) resolve sources: symbolic links
    // followed, but never out of the context directory.
    let root = dir
        .canonicalize()
        .with_context(|| format!("the context directory {}", dir.display()))?;
    let path = root
        .join(rel)
        .canonicalize()
        .with_context(|| format!("COPY source {rel} in {}", root.display()))?;
    if !path.starts_with(&root) {
        bail!(
            "COPY source {rel} leads out of the context directory {} (to {})",
            root.display(),
            path.display()
        );
    }
    let meta =
        std::fs::metadata(&path).with_context(|| format!("COPY source {}", path.display()))?;
    let file = tempfile_in_tmp()?;
    let mut b = tar::Builder::new(file);
    b.follow_symlinks(false);
    let name = if rel.is_empty() { "." } else { rel };
    if meta.is_dir() {
        b.append_dir_all(name, &path)
            .with_context(|| format!("archiving {}", path.display()))?;
    } else {
        b.append_path_with_name(&path, name)
            .with_context(|| format!("archiving {}", path.display()))?;
    }
    let mut file = b.into_inner().context("finishing the context archive")?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// The image archive to upload for `path`, as one uncompressed tar: a
/// tar as it is, a gzip-compressed one decompressed, an OCI layout (or
/// unpacked `docker save`) directory archived.
pub(crate) fn image_archive(path: &std::path::Path) -> Result<std::fs::File> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_dir() {
        if !path.join("index.json").is_file() && !path.join("manifest.json").is_file() {
            bail!(
                "{} is neither an OCI image layout (index.json) nor a docker save directory (manifest.json)",
                path.display()
            );
        }
        return context_tar(path, "");
    }
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    match &magic[..n] {
        [0x1f, 0x8b, ..] => {
            let mut out = tempfile_in_tmp()?;
            std::io::copy(&mut flate2::read::GzDecoder::new(f), &mut out)
                .with_context(|| format!("decompressing {}", path.display()))?;
            out.seek(SeekFrom::Start(0))?;
            Ok(out)
        }
        [0x28, 0xb5, 0x2f, 0xfd] => bail!(
            "{} is zstd-compressed: decompress it first (zstd -d)",
            path.display()
        ),
        _ => Ok(f),
    }
}

/// An unnamed temporary file (gone when closed).
pub(crate) fn tempfile_in_tmp() -> Result<std::fs::File> {
    let dir = std::env::temp_dir();
    let path = dir.join(format!(".atoll-upload-{}", uuid::Uuid::new_v4()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

/// The context sources the COPY and ADD steps of `dockerfile` name,
/// normalized as the builder finds them (`./lib/` → `lib`, `.` → ``), each
/// once, in order. Wildcards and `..` are refused here, as the builder
/// would refuse them after the upload.
pub(crate) fn context_sources(dockerfile: &str) -> Result<Vec<String>> {
    use atoll_types::dockerfile::{parse, Instruction};
    let steps = parse(dockerfile, &Default::default()).map_err(|e| anyhow!("{e}"))?;
    let mut out: Vec<String> = Vec::new();
    for step in steps {
        let Instruction::Copy { sources, .. } = step.instruction else {
            continue;
        };
        for s in sources {
            if s.contains(['*', '?', '[']) {
                bail!(
                    "line {}: wildcards in COPY sources are not supported ({s})",
                    step.line
                );
            }
            let mut parts = Vec::new();
            for seg in s.split('/') {
                match seg {
                    "" | "." => {}
                    ".." => bail!("line {}: COPY source {s} leaves the context", step.line),
                    other => parts.push(other),
                }
            }
            let rel = parts.join("/");
            if !out.contains(&rel) {
                out.push(rel);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_are_compact_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_553_912);
        assert_eq!(amz_date(t), "20261206T104512Z");
    }

    #[test]
    fn context_sources_are_normalized_once_and_wildcards_refused() {
        let d = "FROM x\nCOPY ./lib/ /app/lib\nADD main.py lib /app/\nCOPY . /all\nRUN true\n";
        assert_eq!(context_sources(d).unwrap(), ["lib", "main.py", ""]);
        assert!(context_sources("FROM x\nCOPY *.py /app/\n").is_err());
        assert!(context_sources("FROM x\nCOPY ../secret /app/\n").is_err());
        assert!(context_sources("FROM x\nRUN true\n").unwrap().is_empty());
    }

    #[test]
    fn context_tars_name_entries_as_the_dockerfile_does() {
        let dir = std::env::temp_dir().join(format!("atoll-ctx-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("lib/sub")).unwrap();
        std::fs::write(dir.join("lib/sub/a.txt"), "a").unwrap();
        std::fs::write(dir.join("main.py"), "print(1)").unwrap();
        let names = |rel: &str| -> Vec<String> {
            let f = context_tar(&dir, rel).unwrap();
            let mut a = tar::Archive::new(f);
            let mut v: Vec<String> = a
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("main.py"), ["main.py"]);
        // A link out of the context is refused; one inside is followed.
        std::os::unix::fs::symlink("/etc", dir.join("out")).unwrap();
        assert!(context_tar(&dir, "out/hostname").is_err());
        std::os::unix::fs::symlink("lib", dir.join("alias")).unwrap();
        assert!(names("alias").contains(&"alias/sub/a.txt".to_string()));
        assert!(names("lib").contains(&"lib/sub/a.txt".to_string()));
        assert!(
            names("").contains(&"./main.py".to_string())
                || names("").contains(&"main.py".to_string())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
