//! `push` and `pull` of releases through an OCI distribution registry (Harbor, the
//! distribution registry, any registry that stores artifacts).
//!
//! A release is one OCI artifact (`artifactType` [`ARTIFACT_TYPE`], an empty config):
//! its `raw.zst` in layers of at most `layer_size` bytes, then `manifest.json`,
//! `SHA256SUMS`, the console log of its boot test and its release record as small layers.
//! Annotations carry profile, version, arch, image sha256, recipe id, lock digest and
//! whether it passed a boot test. Nothing in the manifest depends on when or where it was
//! pushed, so one release pushed twice (or by two machines) has one manifest digest.
//!
//! Blobs go up in chunks (POST, PATCH with Content-Range, PUT ?digest=). A blob the
//! registry has is skipped (HEAD); the URL of an upload under way is kept in the cache, and
//! a rerun after a broken connection asks the registry for its offset and goes on from there.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ureq::http::{Method, Request, Response, StatusCode};

use super::ReleaseFiles;
use crate::error::{Kind, UserError};
use crate::release::record::{Release, Remote};

pub const ARTIFACT_TYPE: &str = "application/vnd.imagebuild.disk.v1";
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
const PART_TYPE: &str = "application/vnd.imagebuild.disk.raw.zst.part.v1";
const FILE_TYPE: &str = "application/vnd.imagebuild.file.v1";
const RECORD_TYPE: &str = "application/vnd.imagebuild.release.v1+json";
const TITLE: &str = "org.opencontainers.image.title";
const RECORD_TITLE: &str = "release.json";
/// Manifests and small layers are read whole up to this.
const SMALL_LIMIT: u64 = 16 << 20;

/// `oci://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]` (the `oci://` is optional for pull).
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub host: String,
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| -> anyhow::Error {
            UserError::invalid(format!("`{s}` is not a registry reference: {why}"))
                .hint("write oci://HOST/REPO, oci://HOST/REPO:TAG or oci://HOST/REPO@sha256:DIGEST")
                .into()
        };
        let rest = s.strip_prefix("oci://").unwrap_or(s);
        let (host, path) = rest.split_once('/').ok_or_else(|| bad("no repository"))?;
        if host.is_empty() || !host.contains(['.', ':']) && host != "localhost" {
            return Err(bad("the first part must be the registry's host"));
        }
        let (path, digest) = match path.split_once('@') {
            Some((p, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("a digest is sha256:HEX"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("a digest is sha256: and 64 hex digits"));
                }
                (p, Some(d.to_ascii_lowercase()))
            }
            None => (path, None),
        };
        let (repo, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
            _ => (path, None),
        };
        let repo_ok = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repo_ok {
            return Err(bad(
                "a repository is lowercase letters, digits, `._-` and `/`",
            ));
        }
        Ok(Reference {
            host: host.to_string(),
            repo: repo.to_string(),
            tag,
            digest,
        })
    }

    /// What the registry is asked for: the digest, else the tag.
    fn reference(&self) -> Option<&str> {
        self.digest.as_deref().or(self.tag.as_deref())
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "oci://{}/{}", self.host, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// How to talk to registries.
#[derive(Debug, Clone)]
pub struct Options {
    /// Plain http to this host even if it is not loopback.
    pub insecure: bool,
    /// The largest layer of the image; larger images are split.
    pub layer_size: u64,
    /// The largest PATCH of an upload.
    pub chunk_size: u64,
    /// Where upload URLs are kept between runs.
    pub state_dir: PathBuf,
    /// Also move the tag `latest-verified` to the pushed release (push only; a release
    /// that has not passed a boot test is refused).
    pub latest_verified: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: String,
    #[serde(rename = "artifactType", default)]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// One layer to push: a range of a file.
struct Source {
    path: PathBuf,
    offset: u64,
    len: u64,
    desc: Descriptor,
}

/// What a push did.
#[derive(Debug, Serialize)]
pub struct Pushed {
    pub reference: String,
    pub digest: String,
    pub blobs: usize,
    /// Blobs the registry already had.
    pub skipped: usize,
    /// Bytes sent in blob uploads this run.
    pub sent: u64,
}

/// Pushes the release `files` to `to` (tag: the release's version unless `to` names one).
pub fn push(
    files: &ReleaseFiles,
    cache: &Path,
    to: &Reference,
    opts: &Options,
    progress: &dyn Fn(&str),
) -> Result<Pushed> {
    if to.digest.is_some() {
        return Err(UserError::invalid(format!(
            "push to {to}: a push names a repository and a tag, not a digest"
        ))
        .into());
    }
    if opts.latest_verified && !files.record.verified {
        return Err(UserError::invalid(format!(
            "{}@{} has not passed a boot test: the tag latest-verified stays where it is",
            files.profile, files.record.version
        ))
        .into());
    }
    let tag = to
        .tag
        .clone()
        .unwrap_or_else(|| files.record.version.clone());
    let sources = sources(files, cache, opts.layer_size)?;
    let mut client = Client::new(&to.host, &to.repo, opts)?;
    let empty = b"{}";
    let config = Descriptor {
        media_type: EMPTY_TYPE.into(),
        digest: sha256_digest(empty),
        size: 2,
        data: Some("e30=".into()),
        annotations: BTreeMap::new(),
    };
    let mut pushed = Pushed {
        reference: String::new(),
        digest: String::new(),
        blobs: sources.len() + 1,
        skipped: 0,
        sent: 0,
    };
    if client.has_blob(&config.digest)? {
        pushed.skipped += 1;
    } else {
        client.upload_bytes(&config.digest, empty)?;
    }
    for s in &sources {
        if client.has_blob(&s.desc.digest)? {
            pushed.skipped += 1;
            continue;
        }
        progress(&format!(
            "pushing {} ({})",
            s.desc.annotations.get(TITLE).map_or("", String::as_str),
            crate::size::Bytes(s.len)
        ));
        pushed.sent += client.upload(s, opts)?;
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_TYPE.into(),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config,
        layers: sources.into_iter().map(|s| s.desc).collect(),
        annotations: annotations(files)?,
    };
    let body = serde_json::to_vec(&manifest)?;
    let digest = sha256_digest(&body);
    client.put_manifest(&tag, &body)?;
    if opts.latest_verified {
        client.put_manifest("latest-verified", &body)?;
    }
    pushed.reference = Reference {
        tag: Some(tag),
        ..to.clone()
    }
    .to_string();
    pushed.digest = digest;
    Ok(pushed)
}

/// The record entry of a push.
pub fn pushed_remote(p: &Pushed) -> Remote {
    Remote {
        how: "pushed".into(),
        location: p.reference.clone(),
        id: p.digest.clone(),
        at: crate::release::record::now(),
    }
}

fn annotations(files: &ReleaseFiles) -> Result<BTreeMap<String, String>> {
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(files.path("manifest.json"))
            .context("reading the release's manifest.json")?,
    )?;
    let r = &files.record;
    let mut a = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        a.insert(format!("dev.imagebuild.{k}"), v);
    };
    put("profile", files.profile.clone());
    put("version", r.version.clone());
    put(
        "arch",
        manifest["arch"].as_str().unwrap_or_default().to_string(),
    );
    put("image-sha256", r.image_sha256.clone());
    put("recipe-id", r.recipe_id.clone());
    put("lock-digest", r.lock_digest.clone().unwrap_or_default());
    put("verified", r.verified.to_string());
    let epoch = manifest["source_date_epoch"].as_i64().unwrap_or(0);
    a.insert("org.opencontainers.image.created".into(), rfc3339(epoch));
    a.insert("org.opencontainers.image.version".into(), r.version.clone());
    Ok(a)
}

/// The layers of a release, digested: the raw.zst's parts, then the small files.
fn sources(files: &ReleaseFiles, cache: &Path, layer_size: u64) -> Result<Vec<Source>> {
    let zst = files.raw_zst(cache)?;
    let len = std::fs::metadata(&zst)?.len();
    let parts = len.div_ceil(layer_size).max(1);
    let mut out = Vec::new();
    for i in 0..parts {
        let offset = i * layer_size;
        let n = (len - offset).min(layer_size);
        let digest = digest_range(&zst, offset, n)?;
        out.push(Source {
            path: zst.clone(),
            offset,
            len: n,
            desc: layer(
                PART_TYPE,
                digest,
                n,
                &format!("{}.raw.zst.{i:04}", files.stem),
            ),
        });
    }
    let log = format!("{}.console.log", files.stem);
    for name in ["manifest.json", "SHA256SUMS", log.as_str()] {
        let p = files.path(name);
        if !p.is_file() {
            continue;
        }
        let n = std::fs::metadata(&p)?.len();
        out.push(Source {
            desc: layer(FILE_TYPE, digest_range(&p, 0, n)?, n, name),
            path: p,
            offset: 0,
            len: n,
        });
    }
    // The record as it travels: where it was pushed is said by the registry, not by it.
    let mut rec = files.record.clone();
    rec.remotes.clear();
    let body = serde_json::to_vec_pretty(&rec)?;
    let dir = cache.join("zst");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!("{}.release.json", rec.image_sha256));
    std::fs::write(&tmp, &body).with_context(|| format!("writing {}", tmp.display()))?;
    out.push(Source {
        desc: layer(
            RECORD_TYPE,
            sha256_digest(&body),
            body.len() as u64,
            RECORD_TITLE,
        ),
        path: tmp,
        offset: 0,
        len: body.len() as u64,
    });
    Ok(out)
}

fn layer(media_type: &str, digest: String, size: u64, title: &str) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest,
        size,
        data: None,
        annotations: BTreeMap::from([(TITLE.to_string(), title.to_string())]),
    }
}

/// What a pull did.
#[derive(Debug, Serialize)]
pub struct Pulled {
    pub profile: String,
    pub version: String,
    pub image_sha256: String,
    pub digest: String,
    pub dir: PathBuf,
    /// The release was already here with these bytes.
    pub already: bool,
}

/// Pulls `from` into `out_root` as a release: every blob checked against its digest, the
/// image against its sha256, published atomically and recorded.
pub fn pull(
    from: &Reference,
    out_root: &Path,
    opts: &Options,
    progress: &dyn Fn(&str),
) -> Result<Pulled> {
    let Some(reference) = from.reference() else {
        return Err(
            UserError::invalid(format!("pull {from}: name a tag or a digest"))
                .hint("oci://HOST/REPO:VERSION or oci://HOST/REPO@sha256:DIGEST")
                .into(),
        );
    };
    let mut client = Client::new(&from.host, &from.repo, opts)?;
    let body = client.get_manifest(reference)?;
    let digest = sha256_digest(&body);
    if let Some(want) = &from.digest
        && *want != digest
    {
        return Err(corrupt(format!(
            "the registry sent a manifest with digest {digest} for {from}"
        )));
    }
    let m: Manifest = serde_json::from_slice(&body).map_err(|e| {
        corrupt(format!(
            "the manifest of {from} is not an OCI manifest: {e}"
        ))
    })?;
    if m.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(UserError::invalid(format!(
            "{from} is not an imagebuild release (artifactType {:?})",
            m.artifact_type.unwrap_or_default()
        ))
        .into());
    }
    let note = |k: &str| m.annotations.get(&format!("dev.imagebuild.{k}")).cloned();
    let (Some(profile), Some(version), Some(sha)) =
        (note("profile"), note("version"), note("image-sha256"))
    else {
        return Err(corrupt(format!(
            "the manifest of {from} lacks profile, version or image sha256"
        )));
    };
    for (what, v) in [("profile", &profile), ("version", &version)] {
        crate::release::name::check_plain(what, v)
            .map_err(|e| corrupt(format!("the manifest of {from}: {e}")))?;
    }
    let remote = Remote {
        how: "pulled".into(),
        location: from.to_string(),
        id: digest.clone(),
        at: crate::release::record::now(),
    };
    let locked = crate::release::record::lock(out_root, &profile)?;
    let decision = locked.decide(&version, &sha, false, "the registry's release")?;
    let stem = format!("{profile}-{version}");
    let dest = out_root.join(&profile).join(&version);
    if matches!(decision, crate::release::record::Decision::Same(_))
        && dest.join(format!("{stem}.raw")).is_file()
    {
        locked.add_remote(&version, &sha, remote)?;
        return Ok(Pulled {
            profile,
            version,
            image_sha256: sha,
            digest,
            dir: dest,
            already: true,
        });
    }
    let staging = crate::output::Staging::begin(out_root, &profile, &version)?;
    let zst_path = staging.path(&format!("{stem}.raw.zst"));
    let mut zst = File::create(&zst_path)?;
    let mut record: Option<Release> = None;
    for l in &m.layers {
        let title = l.annotations.get(TITLE).cloned().unwrap_or_default();
        progress(&format!("pulling {title} ({})", crate::size::Bytes(l.size)));
        match l.media_type.as_str() {
            PART_TYPE => client.get_blob(l, &mut zst)?,
            RECORD_TYPE => {
                let mut buf = Vec::new();
                client.get_blob(l, &mut buf)?;
                record = Some(serde_json::from_slice(&buf).map_err(|e| {
                    corrupt(format!("the release record in {from} does not read: {e}"))
                })?);
            }
            FILE_TYPE => {
                let ok = ["manifest.json", "SHA256SUMS"].contains(&title.as_str())
                    || title == format!("{stem}.console.log");
                if !ok {
                    return Err(corrupt(format!("{from} has an unexpected file `{title}`")));
                }
                let mut f = File::create(staging.path(&title))?;
                client.get_blob(l, &mut f)?;
            }
            other => {
                return Err(corrupt(format!(
                    "{from} has a layer of unknown type {other}"
                )));
            }
        }
    }
    zst.sync_all()?;
    drop(zst);
    progress("unpacking the image");
    let raw = staging.path(&format!("{stem}.raw"));
    let got = unzstd_sparse(&zst_path, &raw)?;
    if got != sha {
        return Err(corrupt(format!(
            "the image pulled from {from} has sha256 {got}, but its manifest says {sha}; \
             nothing was published"
        )));
    }
    let mut rec = record.ok_or_else(|| corrupt(format!("{from} has no release record")))?;
    if rec.image_sha256 != sha || rec.version != version {
        return Err(corrupt(format!(
            "the release record in {from} names another image or version"
        )));
    }
    rec.remotes.clear();
    staging.publish()?;
    locked.record(&decision, rec.clone(), None, remote.at)?;
    locked.add_remote(&version, &sha, remote)?;
    Ok(Pulled {
        profile,
        version,
        image_sha256: sha,
        digest,
        dir: dest,
        already: false,
    })
}

/// Decompresses `zst` into `raw`, writing only blocks that are not zeros (the file stays
/// sparse), and returns the raw image's sha256.
fn unzstd_sparse(zst: &Path, raw: &Path) -> Result<String> {
    let mut z = zstd::Decoder::new(File::open(zst)?)?;
    let out = File::create(raw)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = z
                .read(&mut buf[n..])
                .context("decompressing the pulled image")?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        for (i, block) in buf[..n].chunks(64 << 10).enumerate() {
            if block.iter().any(|&b| b != 0) {
                out.write_all_at(block, at + (i as u64) * (64 << 10))?;
            }
        }
        at += n as u64;
    }
    out.set_len(at)?;
    out.sync_all()?;
    Ok(hex::encode(h.finalize()))
}

fn corrupt(msg: String) -> anyhow::Error {
    UserError::new(Kind::Corrupt, msg).into()
}

fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn digest_range(p: &Path, offset: u64, len: u64) -> Result<String> {
    let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    crate::sparse::hash_range(&f, &mut h, offset..offset + len, &mut buf)
        .with_context(|| format!("hashing {}", p.display()))?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn rfc3339(epoch: i64) -> String {
    let days = epoch.div_euclid(86400);
    let secs = epoch.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A registry session for one repository: pull and push scope.
struct Client {
    agent: ureq::Agent,
    base: String,
    host: String,
    repo: String,
    basic: Option<String>,
    token: Option<String>,
    state_dir: PathBuf,
}

impl Client {
    fn new(host: &str, repo: &str, opts: &Options) -> Result<Client> {
        let loopback = crate::stack::registry::is_loopback(host);
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .timeout_send_body(Some(Duration::from_secs(300)))
            .max_redirects(0)
            .user_agent(concat!("imagebuild/", env!("CARGO_PKG_VERSION")));
        if loopback {
            config = config.proxy(None);
        }
        let scheme = if loopback || opts.insecure {
            "http"
        } else {
            "https"
        };
        Ok(Client {
            agent: config.build().new_agent(),
            base: format!("{scheme}://{host}"),
            host: host.to_string(),
            repo: repo.to_string(),
            basic: docker_auth(host),
            token: None,
            state_dir: opts.state_dir.clone(),
        })
    }

    /// Sends a request, answering one 401 with a token (or Basic credentials).
    fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Response<ureq::Body>> {
        let url = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else {
            format!("{}{url}", self.base)
        };
        for attempt in 0..2 {
            let mut req = Request::builder().method(method.clone()).uri(&url);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some(t) = &self.token {
                req = req.header("Authorization", format!("Bearer {t}"));
            } else if let Some(b) = &self.basic {
                req = req.header("Authorization", format!("Basic {b}"));
            }
            let resp = self
                .agent
                .run(req.body(body)?)
                .map_err(|e| self.net_error(&format!("{method} {}: {e}", path_of(&url))))?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                if challenge.starts_with("Basic") && self.basic.is_some() {
                    break;
                }
                self.token = Some(self.fetch_token(&challenge)?);
                continue;
            }
            return Ok(resp);
        }
        Err(UserError::new(
            Kind::Tool,
            format!(
                "registry {} refused the credentials for {}",
                self.host, self.repo
            ),
        )
        .hint("log in with `docker login` or `podman login` (imagebuild reads their auth files)")
        .into())
    }

    fn fetch_token(&self, challenge: &str) -> Result<String> {
        let params = crate::stack::registry::parse_challenge(challenge).ok_or_else(|| {
            UserError::new(
                Kind::Tool,
                format!("registry {} wants authentication: `{challenge}`", self.host),
            )
            .hint(
                "log in with `docker login` or `podman login` (imagebuild reads their auth files)",
            )
        })?;
        let realm = params.get("realm").cloned().unwrap_or_default();
        let scope = format!("repository:{}:pull,push", self.repo);
        let mut url = format!(
            "{realm}{}scope={}",
            if realm.contains('?') { '&' } else { '?' },
            crate::stack::registry::encode(&scope)
        );
        if let Some(s) = params.get("service") {
            url.push_str(&format!("&service={}", crate::stack::registry::encode(s)));
        }
        let mut req = self.agent.get(&url);
        if let Some(b) = &self.basic {
            req = req.header("Authorization", &format!("Basic {b}"));
        }
        let mut resp = req
            .call()
            .map_err(|e| self.net_error(&format!("token: {e}")))?;
        if !resp.status().is_success() {
            return Err(self.net_error(&format!("the token service answered {}", resp.status())));
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(SMALL_LIMIT)
            .read_to_vec()?;
        let t: Token = serde_json::from_slice(&body)?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| self.net_error("the token service sent no token"))
    }

    fn has_blob(&mut self, digest: &str) -> Result<bool> {
        let url = format!("/v2/{}/blobs/{digest}", self.repo);
        let resp = self.send(Method::HEAD, &url, &[], &[])?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(self.answer_error("HEAD", &url, s, resp)),
        }
    }

    fn upload_bytes(&mut self, digest: &str, data: &[u8]) -> Result<()> {
        let url = self.start_upload()?;
        let url = with_query(&url, &format!("digest={digest}"));
        let resp = self.send(
            Method::PUT,
            &url,
            &[("Content-Type", "application/octet-stream".into())],
            data,
        )?;
        self.expect(resp, StatusCode::CREATED, "PUT", "a blob")?;
        Ok(())
    }

    fn start_upload(&mut self) -> Result<String> {
        let url = format!("/v2/{}/blobs/uploads/", self.repo);
        let resp = self.send(Method::POST, &url, &[], &[])?;
        let resp = self.expect(resp, StatusCode::ACCEPTED, "POST", &url)?;
        location(&resp).ok_or_else(|| self.net_error("an upload began without a Location"))
    }

    /// Uploads `s` in chunks, going on from where an earlier run broke off; bytes sent.
    fn upload(&mut self, s: &Source, opts: &Options) -> Result<u64> {
        let state = self.state_dir.join(format!(
            "{}-{}",
            sanitize(&self.host),
            s.desc.digest.replace(':', "-")
        ));
        std::fs::create_dir_all(&self.state_dir)?;
        let (mut url, mut offset) = match std::fs::read_to_string(&state) {
            Ok(u) => match self.upload_offset(u.trim())? {
                Some(o) => (u.trim().to_string(), o),
                None => (self.start_upload()?, 0),
            },
            Err(_) => (self.start_upload()?, 0),
        };
        std::fs::write(&state, &url)?;
        let f = File::open(&s.path)?;
        // OK to cast: chunk sizes are at most a few hundred MiB.
        let mut buf = vec![0u8; opts.chunk_size.min(s.len.max(1)) as usize];
        let mut sent = 0;
        while offset < s.len {
            let n = (s.len - offset).min(buf.len() as u64);
            // OK to cast: n <= buf.len().
            let chunk = &mut buf[..n as usize];
            f.read_exact_at(chunk, s.offset + offset)?;
            let resp = self.send(
                Method::PATCH,
                &url,
                &[
                    ("Content-Type", "application/octet-stream".into()),
                    ("Content-Range", format!("{offset}-{}", offset + n - 1)),
                ],
                chunk,
            )?;
            let resp = self.expect(resp, StatusCode::ACCEPTED, "PATCH", "a blob chunk")?;
            if let Some(next) = location(&resp) {
                url = next;
                std::fs::write(&state, &url)?;
            }
            offset += n;
            sent += n;
        }
        let resp = self.send(
            Method::PUT,
            &with_query(&url, &format!("digest={}", s.desc.digest)),
            &[],
            &[],
        )?;
        self.expect(resp, StatusCode::CREATED, "PUT", "a blob")?;
        let _ = std::fs::remove_file(&state);
        Ok(sent)
    }

    /// The offset an upload under way continues from, or None when the registry no
    /// longer knows it.
    fn upload_offset(&mut self, url: &str) -> Result<Option<u64>> {
        let resp = self.send(Method::GET, url, &[], &[])?;
        if !resp.status().is_success() {
            return Ok(None);
        }
        let range = resp
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.split_once('-'))
            .and_then(|(_, end)| end.parse::<u64>().ok());
        Ok(Some(range.map_or(0, |end| end + 1)))
    }

    fn put_manifest(&mut self, tag: &str, body: &[u8]) -> Result<()> {
        let url = format!("/v2/{}/manifests/{tag}", self.repo);
        let resp = self.send(
            Method::PUT,
            &url,
            &[("Content-Type", MANIFEST_TYPE.into())],
            body,
        )?;
        self.expect(resp, StatusCode::CREATED, "PUT", &url)?;
        Ok(())
    }

    fn get_manifest(&mut self, reference: &str) -> Result<Vec<u8>> {
        let url = format!("/v2/{}/manifests/{reference}", self.repo);
        let resp = self.send(Method::GET, &url, &[("Accept", MANIFEST_TYPE.into())], &[])?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(UserError::invalid(format!(
                "{}/{} has no {reference}",
                self.host, self.repo
            ))
            .hint("`imagebuild releases PROFILE` lists where each release was pushed")
            .into());
        }
        let mut resp = self.expect(resp, StatusCode::OK, "GET", &url)?;
        Ok(resp
            .body_mut()
            .with_config()
            .limit(SMALL_LIMIT)
            .read_to_vec()?)
    }

    /// Streams blob `d` into `w`, checking its size and digest.
    fn get_blob(&mut self, d: &Descriptor, w: &mut dyn Write) -> Result<()> {
        let url = format!("/v2/{}/blobs/{}", self.repo, d.digest);
        let resp = self.send(Method::GET, &url, &[], &[])?;
        let mut resp = self.expect(resp, StatusCode::OK, "GET", &url)?;
        let mut r = resp.body_mut().with_config().limit(d.size + 1).reader();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = r
                .read(&mut buf)
                .map_err(|e| self.net_error(&format!("reading blob {}: {e}", d.digest)))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            w.write_all(&buf[..k])?;
            n += k as u64;
        }
        let got = format!("sha256:{}", hex::encode(h.finalize()));
        if n != d.size || got != d.digest {
            return Err(corrupt(format!(
                "blob {} of {}/{} does not match its digest: the registry sent {n} bytes \
                 with digest {got}; nothing was published",
                d.digest, self.host, self.repo
            )));
        }
        Ok(())
    }

    fn expect(
        &self,
        resp: Response<ureq::Body>,
        want: StatusCode,
        method: &str,
        what: &str,
    ) -> Result<Response<ureq::Body>> {
        if resp.status() == want || (want == StatusCode::OK && resp.status().is_success()) {
            return Ok(resp);
        }
        let s = resp.status();
        Err(self.answer_error(method, what, s, resp))
    }

    fn answer_error(
        &self,
        method: &str,
        what: &str,
        s: StatusCode,
        mut resp: Response<ureq::Body>,
    ) -> anyhow::Error {
        let body = super::answer_text(&mut resp);
        UserError::new(
            Kind::Tool,
            format!(
                "registry {} answered {s} to {method} {}: {}",
                self.host,
                path_of(what),
                body.trim()
            ),
        )
        .into()
    }

    fn net_error(&self, e: &str) -> anyhow::Error {
        UserError::new(Kind::Tool, format!("registry {}: {e}", self.host))
            .hint("check the network and run the same command again: finished blobs are not sent twice")
            .into()
    }
}

/// The Location header of an answer, made absolute by the caller's base when relative.
fn location(resp: &Response<ureq::Body>) -> Option<String> {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn with_query(url: &str, q: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{q}")
}

fn path_of(url: &str) -> &str {
    let no_query = url.split('?').next().unwrap_or(url);
    match no_query.find("://") {
        Some(i) => no_query[i + 3..]
            .find('/')
            .map_or(no_query, |j| &no_query[i + 3 + j..]),
        None => no_query,
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Basic credentials for `host` from the auth files docker and podman write
/// (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG` or
/// `~/.docker/config.json`): the base64 `auth` of the first that names the host.
fn docker_auth(host: &str) -> Option<String> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(p.into());
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(d).join("containers/auth.json"));
    }
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => files.push(PathBuf::from(d).join("config.json")),
        None => {
            if let Some(h) = std::env::var_os("HOME") {
                files.push(PathBuf::from(h).join(".docker/config.json"));
            }
        }
    }
    files.iter().find_map(|f| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(f).ok()?).ok()?;
        let auths = v.get("auths")?.as_object()?;
        auths
            .iter()
            .find(|(k, _)| {
                let k = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                k.split('/').next() == Some(host)
            })
            .and_then(|(_, a)| a.get("auth")?.as_str().map(str::to_string))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("oci://127.0.0.1:5000/os/prod-arm64:2026.12.1").unwrap();
        assert_eq!(
            (r.host.as_str(), r.repo.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "os/prod-arm64", Some("2026.12.1"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("harbor.example.com/os/prod@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(
            r.to_string(),
            format!("oci://harbor.example.com/os/prod@{d}")
        );
        for bad in [
            "oci://prod",
            "prod/x:1",
            "oci://h.example/Os",
            "oci://h.example/x@md5:1",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn created_is_the_epoch_in_rfc3339() {
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_825_599), "2000-02-29T11:59:59Z");
    }

    #[test]
    fn paths_of_urls() {
        assert_eq!(
            path_of("http://h:5000/v2/x/blobs/uploads/abc?_state=1"),
            "/v2/x/blobs/uploads/abc"
        );
        assert_eq!(with_query("/u?a=1", "digest=d"), "/u?a=1&digest=d");
    }
}
