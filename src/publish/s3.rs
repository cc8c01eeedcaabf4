//! `upload RELEASE s3://BUCKET/PREFIX/`: the release's raw image as one object in any
//! S3-compatible store (AWS, Hetzner Object Storage, DigitalOcean Spaces, MinIO, Garage).
//!
//! Requests are signed by rusty-s3 (SigV4, sans-IO) and sent with ureq, the client the
//! registry code already uses: no async runtime for one sequential upload. The object is a
//! multipart upload of `part_size` parts, one part in memory at a time; every part's ETag
//! (its MD5, as S3 computes it for a plain object) is checked against the bytes sent, and
//! the finished object's composite ETag and its `x-amz-meta-imagebuild-sha256` are checked
//! once more with a HEAD. The upload id is kept in the cache: a rerun after a broken
//! connection lists the parts the store has, skips those whose ETag matches, and sends
//! the rest. An object whose recorded sha256 is the release's is not sent again.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use md5::{Digest, Md5};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use serde::Serialize;

use super::ReleaseFiles;
use crate::error::{Kind, UserError};
use crate::release::record::Remote;

const SIGN_FOR: Duration = Duration::from_secs(3600);
const META_SHA: &str = "x-amz-meta-imagebuild-sha256";

/// `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub bucket: String,
    /// The key's beginning: empty or ending in `/` when the destination names a folder.
    pub prefix: String,
}

impl Target {
    pub fn parse(s: &str) -> Result<Target> {
        let rest = s.strip_prefix("s3://").ok_or_else(|| {
            UserError::invalid(format!("`{s}` is not an S3 destination"))
                .hint("write s3://BUCKET/ or s3://BUCKET/PREFIX/")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !ok {
            return Err(UserError::invalid(format!(
                "`{bucket}` is not a bucket name (3 to 63 lowercase letters, digits, `-` and `.`)"
            ))
            .into());
        }
        Ok(Target {
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }

    /// The object key of `file_name`: PREFIX/NAME when the prefix is a folder, else the
    /// prefix itself.
    pub fn key(&self, file_name: &str) -> String {
        if self.prefix.is_empty() || self.prefix.ends_with('/') {
            format!("{}{file_name}", self.prefix)
        } else {
            self.prefix.clone()
        }
    }
}

/// Where and how to upload.
#[derive(Debug, Clone)]
pub struct Options {
    /// The service's URL; none: AWS in `region`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub part_size: u64,
    /// Where upload ids are kept between runs.
    pub state_dir: PathBuf,
}

/// What an upload did.
#[derive(Debug, Serialize)]
pub struct Uploaded {
    pub location: String,
    pub etag: String,
    pub parts: usize,
    /// Parts the store had from an earlier, broken run.
    pub parts_skipped: usize,
    /// Bytes sent this run.
    pub sent: u64,
    /// The object was there with the release's sha256: nothing was sent.
    pub already: bool,
}

pub fn uploaded_remote(u: &Uploaded) -> Remote {
    Remote {
        how: "uploaded".into(),
        location: u.location.clone(),
        id: u.etag.clone(),
        at: crate::release::record::now(),
    }
}

pub fn upload(
    files: &ReleaseFiles,
    to: &Target,
    opts: &Options,
    progress: &dyn Fn(&str),
) -> Result<Uploaded> {
    let s = Session::new(to, opts)?;
    let raw = files.raw();
    let key = to.key(&format!("{}.raw", files.stem));
    let location = format!("s3://{}/{key}", to.bucket);
    let sha = &files.record.image_sha256;
    let len = std::fs::metadata(&raw)?.len();
    let parts = len.div_ceil(opts.part_size).max(1);
    if parts > 10_000 {
        return Err(UserError::invalid(format!(
            "the image needs {parts} parts of {}; S3 takes at most 10000",
            crate::size::Bytes(opts.part_size)
        ))
        .hint("give a larger --part-size")
        .into());
    }
    if let Some((meta, etag)) = s.head(&key)?
        && meta.as_deref() == Some(sha.as_str())
    {
        return Ok(Uploaded {
            location,
            etag,
            parts: 0,
            parts_skipped: 0,
            sent: 0,
            already: true,
        });
    }
    let state = opts
        .state_dir
        .join(format!("s3-{}-{}-{sha}", to.bucket, opts.part_size));
    std::fs::create_dir_all(&opts.state_dir)?;
    let mut have = std::collections::HashMap::new();
    let upload_id = match std::fs::read_to_string(&state) {
        Ok(id) => match s.list_parts(&key, id.trim())? {
            Some(listed) => {
                have = listed;
                id.trim().to_string()
            }
            None => s.create(&key, sha)?,
        },
        Err(_) => s.create(&key, sha)?,
    };
    std::fs::write(&state, &upload_id)?;
    let f = File::open(&raw).with_context(|| format!("opening {}", raw.display()))?;
    // OK to cast: a part is at most 5 GiB.
    let mut buf = vec![0u8; opts.part_size.min(len.max(1)) as usize];
    let mut etags = Vec::new();
    let mut md5s = Vec::new();
    let mut out = Uploaded {
        location: location.clone(),
        etag: String::new(),
        parts: usize::try_from(parts)?,
        parts_skipped: 0,
        sent: 0,
        already: false,
    };
    for i in 0..parts {
        let at = i * opts.part_size;
        let n = (len - at).min(opts.part_size);
        // OK to cast: n <= buf.len().
        let part = &mut buf[..n as usize];
        f.read_exact_at(part, at)?;
        let md5 = Md5::digest(&part[..]);
        let etag = format!("\"{}\"", hex::encode(md5));
        md5s.extend_from_slice(&md5);
        // OK to unwrap: parts <= 10000.
        let number = u16::try_from(i + 1).unwrap();
        if have.get(&number) == Some(&(etag.clone(), n)) {
            out.parts_skipped += 1;
            etags.push(etag);
            continue;
        }
        progress(&format!(
            "uploading part {number}/{parts} of {location} ({})",
            crate::size::Bytes(n)
        ));
        let got = s.upload_part(&key, &upload_id, number, part)?;
        if got != etag {
            return Err(UserError::new(
                Kind::Corrupt,
                format!(
                    "{location}: part {number} arrived as ETag {got}, but its MD5 is {etag}: \
                     the bytes changed on the way"
                ),
            )
            .hint("run the same command again: the part is sent again")
            .into());
        }
        out.sent += n;
        etags.push(etag);
    }
    s.complete(&key, &upload_id, &etags)?;
    let _ = std::fs::remove_file(&state);
    let want = format!("\"{}-{parts}\"", hex::encode(Md5::digest(&md5s)));
    let (meta, etag) = s.head(&key)?.ok_or_else(|| {
        UserError::new(
            Kind::Tool,
            format!("{location} is not there after its upload"),
        )
    })?;
    if meta.as_deref() != Some(sha.as_str()) || etag != want {
        return Err(UserError::new(
            Kind::Corrupt,
            format!(
                "{location} after its upload: ETag {etag}, sha256 {meta:?}; expected ETag {want}, \
                 sha256 {sha}"
            ),
        )
        .into());
    }
    out.etag = etag;
    Ok(out)
}

/// Signed requests to one bucket.
struct Session {
    agent: ureq::Agent,
    bucket: Bucket,
    creds: Credentials,
    name: String,
}

impl Session {
    fn new(to: &Target, opts: &Options) -> Result<Session> {
        let region = opts
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| aws_file("config", "region"))
            .unwrap_or_else(|| "us-east-1".into());
        let custom = opts
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let (endpoint, style) = match &custom {
            Some(e) => (e.clone(), UrlStyle::Path),
            None => (
                format!("https://s3.{region}.amazonaws.com"),
                UrlStyle::VirtualHost,
            ),
        };
        let url = endpoint
            .parse()
            .map_err(|e| UserError::invalid(format!("endpoint `{endpoint}` is not a URL: {e}")))?;
        let bucket = Bucket::new(url, style, to.bucket.clone(), region)
            .map_err(|e| UserError::invalid(format!("bucket {}: {e}", to.bucket)))?;
        let creds = Credentials::from_env()
            .or_else(|| {
                Some(match aws_file("credentials", "aws_session_token") {
                    Some(t) => Credentials::new_with_token(
                        aws_file("credentials", "aws_access_key_id")?,
                        aws_file("credentials", "aws_secret_access_key")?,
                        t,
                    ),
                    None => Credentials::new(
                        aws_file("credentials", "aws_access_key_id")?,
                        aws_file("credentials", "aws_secret_access_key")?,
                    ),
                })
            })
            .ok_or_else(|| {
                UserError::invalid("no S3 credentials").hint(
                    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in \
                     ~/.aws/credentials (AWS_PROFILE)",
                )
            })?;
        let loopback = custom.as_deref().is_some_and(|e| {
            e.strip_prefix("http://").is_some_and(|h| {
                crate::stack::registry::is_loopback(h.split('/').next().unwrap_or(""))
            })
        });
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(300)))
            .timeout_send_body(Some(Duration::from_secs(600)))
            .user_agent(concat!("imagebuild/", env!("CARGO_PKG_VERSION")));
        if loopback {
            config = config.proxy(None);
        }
        Ok(Session {
            agent: config.build().new_agent(),
            bucket,
            creds,
            name: endpoint,
        })
    }

    fn run(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        stage: &str,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.agent.run(req.body(body)?).map_err(|e| {
            UserError::new(Kind::Tool, format!("S3 {} ({stage}): {e}", self.name))
                .hint("check the network and run the same command again: parts already sent are not sent twice")
                .into()
        })
    }

    fn fail(&self, stage: &str, mut resp: ureq::http::Response<ureq::Body>) -> anyhow::Error {
        let body = super::answer_text(&mut resp);
        UserError::new(
            Kind::Tool,
            format!(
                "S3 {} answered {} to {stage}: {}",
                self.name,
                resp.status(),
                body.trim()
            ),
        )
        .into()
    }

    /// The object's recorded sha256 and ETag, or None when there is no such object.
    fn head(&self, key: &str) -> Result<Option<(Option<String>, String)>> {
        let url = self
            .bucket
            .head_object(Some(&self.creds), key)
            .sign(SIGN_FOR);
        let resp = self.run("HEAD", url.as_str(), &[], &[], "HeadObject")?;
        if resp.status() == 404 {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.fail("HeadObject", resp));
        }
        let h = |k: &str| {
            resp.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(Some((h(META_SHA), h("etag").unwrap_or_default())))
    }

    fn create(&self, key: &str, sha: &str) -> Result<String> {
        // Signed here rather than by rusty-s3's CreateMultipartUpload, which writes the
        // query as `uploads=1`: AWS takes that, but moto's S3 (the tests' emulator) answers
        // it with a 500. `?uploads=` is what the AWS SDKs send.
        let url = rusty_s3::signing::sign(
            &jiff::Timestamp::now(),
            rusty_s3::Method::Post,
            self.bucket.object_url(key),
            self.creds.key(),
            self.creds.secret(),
            self.creds.token(),
            self.bucket.region(),
            SIGN_FOR.as_secs(),
            std::iter::once(("uploads", "")),
            std::iter::once((META_SHA, sha)),
        );
        let mut resp = self.run(
            "POST",
            url.as_str(),
            &[(META_SHA, sha)],
            &[],
            "CreateMultipartUpload",
        )?;
        if !resp.status().is_success() {
            return Err(self.fail("CreateMultipartUpload", resp));
        }
        let body = resp.body_mut().read_to_string()?;
        let parsed = rusty_s3::actions::CreateMultipartUpload::parse_response(&body)
            .map_err(|e| anyhow::anyhow!("S3 {}: CreateMultipartUpload: {e}", self.name))?;
        Ok(parsed.upload_id().to_string())
    }

    /// The parts of an upload under way (ETag and size by number); None when the store no
    /// longer knows the upload.
    fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<std::collections::HashMap<u16, (String, u64)>>> {
        let mut out = std::collections::HashMap::new();
        let mut marker = None;
        loop {
            let mut action = self.bucket.list_parts(Some(&self.creds), key, upload_id);
            if let Some(m) = marker {
                action.set_part_number_marker(m);
            }
            let url = action.sign(SIGN_FOR);
            let mut resp = self.run("GET", url.as_str(), &[], &[], "ListParts")?;
            if resp.status() == 404 {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(self.fail("ListParts", resp));
            }
            let body = resp
                .body_mut()
                .with_config()
                .limit(16 << 20)
                .read_to_string()?;
            let listed = rusty_s3::actions::ListParts::parse_response(&body)
                .map_err(|e| anyhow::anyhow!("S3 {}: ListParts: {e}", self.name))?;
            for p in &listed.parts {
                out.insert(p.number, (p.etag.clone(), p.size));
            }
            match listed.next_part_number_marker {
                Some(m) if listed.parts.len() == usize::from(listed.max_parts) => marker = Some(m),
                _ => return Ok(Some(out)),
            }
        }
    }

    fn upload_part(&self, key: &str, upload_id: &str, number: u16, data: &[u8]) -> Result<String> {
        let url = self
            .bucket
            .upload_part(Some(&self.creds), key, number, upload_id)
            .sign(SIGN_FOR);
        let stage = format!("UploadPart {number}");
        let resp = self.run("PUT", url.as_str(), &[], data, &stage)?;
        if !resp.status().is_success() {
            return Err(self.fail(&stage, resp));
        }
        Ok(resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string())
    }

    fn complete(&self, key: &str, upload_id: &str, etags: &[String]) -> Result<()> {
        let action = self.bucket.complete_multipart_upload(
            Some(&self.creds),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGN_FOR);
        let body = action.body();
        let resp = self.run(
            "POST",
            url.as_str(),
            &[],
            body.as_bytes(),
            "CompleteMultipartUpload",
        )?;
        if !resp.status().is_success() {
            return Err(self.fail("CompleteMultipartUpload", resp));
        }
        Ok(())
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// `key` of the profile (`AWS_PROFILE`, else `default`) in ~/.aws/credentials or
/// ~/.aws/config (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`).
fn aws_file(which: &str, key: &str) -> Option<String> {
    let path = match which {
        "credentials" => env("AWS_SHARED_CREDENTIALS_FILE"),
        _ => env("AWS_CONFIG_FILE"),
    }
    .map(PathBuf::from)
    .or_else(|| Some(PathBuf::from(env("HOME")?).join(".aws").join(which)))?;
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    ini_value(&std::fs::read_to_string(path).ok()?, which, &profile, key)
}

fn ini_value(text: &str, which: &str, profile: &str, key: &str) -> Option<String> {
    let wanted = if which == "config" && profile != "default" {
        format!("profile {profile}")
    } else {
        profile.to_string()
    };
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == wanted;
        } else if inside
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_keys() {
        let t = Target::parse("s3://images/prod/").unwrap();
        assert_eq!(t.key("p-1.raw"), "prod/p-1.raw");
        assert_eq!(Target::parse("s3://images").unwrap().key("p.raw"), "p.raw");
        assert_eq!(
            Target::parse("s3://images/x.raw").unwrap().key("p.raw"),
            "x.raw"
        );
        assert!(Target::parse("s3://Images/").is_err());
        assert!(Target::parse("images/").is_err());
    }

    #[test]
    fn aws_files_by_profile() {
        let creds = "[default]\naws_access_key_id = A\n\n[ops]\naws_access_key_id=B\n";
        assert_eq!(
            ini_value(creds, "credentials", "default", "aws_access_key_id").as_deref(),
            Some("A")
        );
        assert_eq!(
            ini_value(creds, "credentials", "ops", "aws_access_key_id").as_deref(),
            Some("B")
        );
        let config = "[profile ops]\nregion = eu-central-1\n";
        assert_eq!(
            ini_value(config, "config", "ops", "region").as_deref(),
            Some("eu-central-1")
        );
    }
}
