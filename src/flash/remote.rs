//! Flashing a disk of a machine booted into a rescue system (Hetzner, OVH, any Linux live
//! system), over the system's own `ssh` (the user's config, keys and known hosts; host key
//! checking stays on): `ssh://USER@HOST[:PORT]/DEVICE`.
//!
//! 1. The disk probe ([`super::facts::PROBE`]) runs there; the same guard rails judge it.
//! 2. The plan's steps become a small sh script (`remote.sh` + one line per step) and the
//!    bytes it writes are streamed compressed (zstd, else gzip) on its stdin: the rescue
//!    system's RAM disk never holds the image. The partition table is written only after
//!    a marker proves the stream arrived whole.
//! 3. The disk is read back there (O_DIRECT): its first MiB and backup GPT come back to be
//!    compared and put back to the image's size, and the image's bytes are hashed there;
//!    the sha256 must be the release's.
//!
//! Commands run as root: directly when the user is root, else through `sudo -n`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::facts::{Facts, PROBE};
use super::plan::{Plan, Source, Step};
use super::{Ask, Flashed, Meter, Request, check_read_back, confirm_disk, guard, refused, summary};
use crate::error::{Kind, UserError};
use crate::host::Host;
use crate::progress::{Reporter, Timings};
use crate::release::Resolved;
use crate::size::{Bytes, MIB};

/// Holes in the image shorter than this are sent (compressed zeros cost nothing) rather
/// than zeroed by a command of their own.
const COALESCE: u64 = MIB;
const MARKER: &[u8; 16] = b"imagebuild-last\n";
const WRITE_PRELUDE: &str = include_str!("remote.sh");

/// `ssh://USER@HOST[:PORT]/DEVICE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub device: String,
}

impl Target {
    /// None when `s` is not an ssh URL; an error for a malformed one.
    pub fn parse(s: &str) -> Result<Option<Target>> {
        let Some(rest) = s.strip_prefix("ssh://") else {
            return Ok(None);
        };
        let bad = |why: &str| {
            UserError::invalid(format!("{s}: {why}")).hint(
                "write it as ssh://USER@HOST[:PORT]/DEVICE, e.g. ssh://root@203.0.113.7/dev/sda",
            )
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => return Err(bad("no device after the host").into()),
        };
        if !path.starts_with("/dev/") || path.len() <= 5 {
            return Err(bad("the device must be a path under /dev/").into());
        }
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
            Some(_) => return Err(bad("an empty user name").into()),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("an unclosed [ in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host").into());
        }
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| bad(&format!("`{p}` is not a port")))
            })
            .transpose()?;
        Ok(Some(Target {
            user,
            host: host.to_string(),
            port,
            device: path.to_string(),
        }))
    }

    fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// `ssh` running `script` with `args` as root on the target.
    fn ssh(&self, options: &[String], script: &str, args: &[String]) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-o", "BatchMode=yes", "-o", "ServerAliveInterval=10"]);
        if let Some(p) = self.port {
            c.arg("-p").arg(p.to_string());
        }
        for o in options {
            c.arg("-o").arg(o);
        }
        c.arg("--")
            .arg(self.destination())
            .arg(as_root(script, args));
        c
    }
}

/// A command line for the remote user's shell: `sh -c SCRIPT sh ARGS...` as root.
fn as_root(script: &str, args: &[String]) -> String {
    let q = |s: &str| shlex::try_quote(s).map_or_else(|_| format!("'{s}'"), |c| c.into_owned());
    let args: Vec<String> = args.iter().map(|a| q(a)).collect();
    format!(
        "S=; [ \"$(id -u)\" = 0 ] || S='sudo -n'; exec $S sh -c {} sh {}",
        q(script),
        args.join(" ")
    )
}

/// Flashes over ssh; see the module documentation.
#[allow(clippy::too_many_arguments)]
pub fn flash(
    host: &Host,
    t: &Target,
    req: &Request,
    resolved: &Resolved,
    sha: &str,
    image: &File,
    src: &Source,
    states: &[String],
    ask: &dyn Ask,
    rep: &dyn Reporter,
    mut timings: Timings,
) -> Result<Flashed> {
    let facts = timings.stage(rep, "probe", |_| {
        let f = probe(host, t, &req.ssh_options)?;
        let summary = format!("{} on {}", f.target, t.host);
        Ok((f, summary))
    })?;
    let disk =
        guard::check(&facts, &t.device, src.len, None).map_err(|why| refused(&req.target, &why))?;
    let for_confirm = Request {
        target: t.device.clone(),
        ..req.clone()
    };
    confirm_disk(&disk, &for_confirm, ask)?;
    let size = facts.size.unwrap_or(disk.size);
    let plan = super::plan::plan(src, size, Some(&facts.head), states, COALESCE)?;
    let mut flashed = summary(resolved, sha, &req.target, &plan);
    if req.dry_run {
        flashed.dry_run = true;
        crate::say_part!("{}", disk.describe());
        flashed.timings = timings;
        return Ok(flashed);
    }
    let codec = Codec::pick(&facts);
    let t0 = Instant::now();
    let (copy, zero) = plan.totals();
    timings.stage(rep, "write", |s| {
        let mut meter = Meter::new(s, copy);
        write(host, t, &req.ssh_options, &plan, image, codec, &mut |d| {
            meter.at(d)
        })?;
        Ok((
            (),
            format!(
                "{} sent ({}), {} zeroed there",
                Bytes(copy),
                codec.name(),
                Bytes(zero)
            ),
        ))
    })?;
    flashed.write_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let got = timings.stage(rep, "read back", |_| {
        let got = read_back(host, t, &req.ssh_options, &plan)?;
        check_read_back(&got, sha)?;
        Ok((
            got.clone(),
            format!(
                "read back on {}: sha256 {} = the release",
                t.host,
                &got[..12]
            ),
        ))
    })?;
    flashed.read_back_seconds = t1.elapsed().as_secs_f64();
    flashed.read_back_bytes = plan.data_end + (plan.image_len - plan.data_end).min(plan.head);
    flashed.read_back_sha256 = Some(got);
    if !req.credentials.is_empty() {
        flashed.added = timings.stage(rep, "machine", |_| {
            let patch = super::values::patch(image, plan.target_len, &req.credentials)?;
            write(host, t, &req.ssh_options, &patch.plan, image, codec, &mut |_| {})?;
            let got = remote_sha256(host, t, &req.ssh_options, patch.esp.clone())?;
            if got != patch.esp_sha256 {
                return Err(UserError::new(
                    Kind::Corrupt,
                    format!("the ESP with the machine's values read back on {} as sha256 {got}, {} was written", t.host, patch.esp_sha256),
                )
                .into());
            }
            let summary = format!("added {}", patch.added.join(", "));
            Ok((patch.added, summary))
        })?;
    }
    flashed.timings = timings;
    Ok(flashed)
}

/// The sha256 of `range` of the remote disk, read there past the page cache.
fn remote_sha256(
    host: &Host,
    t: &Target,
    options: &[String],
    range: std::ops::Range<u64>,
) -> Result<String> {
    let script = "dd if=\"$1\" bs=4M iflag=direct,skip_bytes,count_bytes skip=\"$2\" count=\"$3\" status=none | sha256sum\n";
    let args = [
        t.device.clone(),
        range.start.to_string(),
        (range.end - range.start).to_string(),
    ];
    let out = run_ssh(host, t, &mut t.ssh(options, script, &args))?;
    let sum = String::from_utf8_lossy(&out.stdout);
    Ok(sum.split_whitespace().next().unwrap_or("").to_string())
}

/// Runs `cmd` (an ssh) to completion; ssh's own failure (255) gets a hint.
fn run_ssh(host: &Host, t: &Target, cmd: &mut Command) -> Result<std::process::Output> {
    host.run(cmd).map_err(|e| {
        let text = format!("{e:#}");
        if text.contains("(exit status: 255)") {
            e.context(
                UserError::new(Kind::Tool, format!("ssh to {} failed", t.destination())).hint(
                    "check that `ssh` reaches it with your keys (BatchMode: no passwords); a \
                 rescue system's new host key needs `ssh-keygen -R HOST` or \
                 --ssh-option StrictHostKeyChecking=accept-new",
                ),
            )
        } else {
            e
        }
    })
}

fn probe(host: &Host, t: &Target, options: &[String]) -> Result<Facts> {
    let out = run_ssh(
        host,
        t,
        &mut t.ssh(options, PROBE, std::slice::from_ref(&t.device)),
    )?;
    Facts::parse(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("reading what {} says about its disks", t.host))
}

/// How the stream is compressed, by what the rescue system can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Zstd,
    Gzip,
    Plain,
}

impl Codec {
    fn pick(facts: &Facts) -> Codec {
        let has = |t: &str| facts.tools.iter().any(|x| x == t);
        if has("zstd") {
            Codec::Zstd
        } else if has("gzip") {
            Codec::Gzip
        } else {
            Codec::Plain
        }
    }

    fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
            Codec::Plain => "uncompressed",
        }
    }

    fn decompress(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd -dcq",
            Codec::Gzip => "gzip -dc",
            Codec::Plain => "cat",
        }
    }

    fn encoder<'a>(self, w: impl Write + Send + 'a) -> Result<Box<dyn Write + Send + 'a>> {
        Ok(match self {
            Codec::Zstd => Box::new(zstd::stream::write::Encoder::new(w, 1)?.auto_finish()),
            Codec::Gzip => Box::new(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::fast(),
            )),
            Codec::Plain => Box::new(w),
        })
    }
}

/// The script for `plan`: the prelude, then one line per step, reading from the
/// decompressed stream; the marker before the last two writes (the backup GPT and the
/// primary one).
fn write_script(plan: &Plan, codec: Codec) -> String {
    let writes: Vec<usize> = plan
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Step::Copy(_) | Step::Write(..)))
        .map(|(i, _)| i)
        .collect();
    let marker_at = writes.len().checked_sub(2).map(|k| writes[k]);
    let mut body = String::new();
    for (i, s) in plan.steps.iter().enumerate() {
        if Some(i) == marker_at {
            body.push_str("\tm\n");
        }
        let line = match s {
            Step::Zero(r) => format!("\tz {} {}\n", r.start, r.end - r.start),
            Step::Copy(r) => format!("\tw {} {}\n", r.start, r.end - r.start),
            Step::Write(at, b) => format!("\tw {at} {}\n", b.len()),
            Step::Sync => "\ts\n".to_string(),
        };
        body.push_str(&line);
    }
    format!(
        "{WRITE_PRELUDE}{} | {{\n{body}}}\nblockdev --rereadpt \"$dev\" 2>/dev/null || true\necho imagebuild-written\n",
        codec.decompress()
    )
}

/// Streams the plan's bytes (the marker before the last two writes) into `out`.
fn stream(
    plan: &Plan,
    image: &File,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let writes = plan
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Copy(_) | Step::Write(..)))
        .count();
    let mut seen = 0;
    let mut buf = vec![0u8; crate::sparse::CHUNK];
    let mut done = 0;
    for s in &plan.steps {
        if !matches!(s, Step::Copy(_) | Step::Write(..)) {
            continue;
        }
        if seen + 2 == writes {
            out.write_all(MARKER)?;
        }
        seen += 1;
        match s {
            Step::Copy(r) => {
                let mut pos = r.start;
                while pos < r.end {
                    let n = usize::try_from(r.end - pos)
                        .unwrap_or(buf.len())
                        .min(buf.len());
                    image.read_exact_at(&mut buf[..n], pos)?;
                    out.write_all(&buf[..n])?;
                    pos += n as u64;
                    done += n as u64;
                    progress(done);
                }
            }
            Step::Write(_, b) => {
                out.write_all(b)?;
                done += b.len() as u64;
            }
            _ => {}
        }
    }
    out.flush()?;
    Ok(())
}

fn write(
    host: &Host,
    t: &Target,
    options: &[String],
    plan: &Plan,
    image: &File,
    codec: Codec,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let script = write_script(plan, codec);
    let mut cmd = t.ssh(options, &script, std::slice::from_ref(&t.device));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = host.spawn(&mut cmd)?;
    // OK to unwrap: all three were set to piped above.
    let stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let sent = (|| -> Result<()> {
        let mut enc = codec.encoder(std::io::BufWriter::with_capacity(1 << 20, stdin))?;
        stream(plan, image, &mut enc, progress)?;
        drop(enc);
        Ok(())
    })();
    let mut out = String::new();
    let _ = stdout.read_to_string(&mut out);
    let status = child.wait().context("waiting for ssh")?;
    let err = err_thread.join().unwrap_or_default();
    for l in err.lines() {
        host.note(&format!("  {l}"));
    }
    if status.success() && out.contains("imagebuild-written") && sent.is_ok() {
        return Ok(());
    }
    let why = match &sent {
        Err(e) if !status.success() || err.trim().is_empty() => format!("{e:#}; {}", err.trim()),
        _ => err.trim().to_string(),
    };
    Err(UserError::new(
        Kind::Tool,
        format!(
            "writing {} on {} failed ({status}): {why}; its partition table is gone, \
             nothing on it boots or mounts now",
            t.device, t.host
        ),
    )
    .hint("run the same command again: a flash starts over and completes")
    .into())
}

/// The sha256 of the image's bytes as the remote disk holds them, checked as
/// [`super::local::read_back`] does, the hashing done there.
fn read_back(host: &Host, t: &Target, options: &[String], plan: &Plan) -> Result<String> {
    let backup_at = plan.target_len - super::gpt::BACKUP_BYTES as u64;
    let script = "dev=$1\ndd if=\"$dev\" bs=\"$2\" count=1 iflag=direct status=none | base64\necho ==imagebuild:backup==\ndd if=\"$dev\" bs=512 skip=$(($3 / 512)) count=$(($4 / 512)) iflag=direct status=none | base64\necho ==imagebuild:end==\n";
    let args = [
        t.device.clone(),
        plan.head.to_string(),
        backup_at.to_string(),
        super::gpt::BACKUP_BYTES.to_string(),
    ];
    let out = run_ssh(host, t, &mut t.ssh(options, script, &args))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (head_b64, rest) = text
        .split_once("==imagebuild:backup==")
        .context("no backup section")?;
    let backup_b64 = rest.split("==imagebuild:end==").next().unwrap_or("");
    let head = super::facts::decode_base64(head_b64)?;
    let backup = super::facts::decode_base64(backup_b64)?;
    if head.len() as u64 != plan.head {
        bail!(
            "read back {} bytes of the first MiB from {}",
            head.len(),
            t.host
        );
    }
    let (stdin, body_len) = match plan.image_ends_from(&head)? {
        Some((image_head, image_tail)) => {
            // OK to unwrap: image_ends_from is Some only when the GPT was moved.
            let m = plan.moved.as_ref().unwrap();
            if head[..super::gpt::PRIMARY_BYTES] != m.primary[..] || backup != m.backup {
                return Err(UserError::new(
                    Kind::Corrupt,
                    "the GPT written for the target reads back differently: the disk does not hold what was written",
                )
                .into());
            }
            let mut bytes = image_head;
            bytes.extend_from_slice(&image_tail);
            (bytes, plan.data_end - plan.head)
        }
        None => (Vec::new(), plan.image_len),
    };
    let head_len = if stdin.is_empty() { 0 } else { plan.head };
    let script = "dev=$1\n{ dd bs=65536 iflag=fullblock,count_bytes count=\"$2\" status=none; dd if=\"$dev\" bs=4M iflag=direct,skip_bytes,count_bytes skip=\"$3\" count=\"$4\" status=none; cat; } | sha256sum\n";
    let skip = if stdin.is_empty() { 0 } else { plan.head };
    let args = [
        t.device.clone(),
        head_len.to_string(),
        skip.to_string(),
        body_len.to_string(),
    ];
    let mut cmd = t.ssh(options, script, &args);
    let input = tempfile::tempfile()?;
    input.write_all_at(&stdin, 0)?;
    cmd.stdin(input);
    let out = host
        .run_with_stdin(&mut cmd)
        .map_err(|e| e.context(format!("hashing the disk on {}", t.host)))?;
    let sum = String::from_utf8_lossy(&out.stdout);
    let sum = sum.split_whitespace().next().unwrap_or("").to_string();
    if sum.len() != 64 {
        bail!("sha256sum on {} printed {sum:?}", t.host);
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = Target::parse("ssh://root@203.0.113.7/dev/sda")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                t.user.as_deref(),
                t.host.as_str(),
                t.port,
                t.device.as_str()
            ),
            (Some("root"), "203.0.113.7", None, "/dev/sda")
        );
        let t = Target::parse("ssh://rescue@127.0.0.1:2222/dev/disk/by-id/nvme-x")
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.port, t.device.as_str()),
            (Some(2222), "/dev/disk/by-id/nvme-x")
        );
        let t = Target::parse("ssh://[::1]:22/dev/vdb").unwrap().unwrap();
        assert_eq!((t.user, t.host.as_str(), t.port), (None, "::1", Some(22)));
        assert_eq!(Target::parse("/dev/sdb").unwrap(), None);
        for bad in [
            "ssh://host",
            "ssh://host/sda",
            "ssh://@h/dev/sda",
            "ssh://h:x/dev/sda",
            "ssh:///dev/sda",
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(
                crate::error::hints(&e)[0].contains("ssh://USER@HOST"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_remote_command_survives_the_remote_shell() {
        // What sshd does with the command: the user's shell runs it (-c).
        let c = as_root(
            "printf '%s|' \"$1\" \"$2\"",
            &["/dev/disk/by-id/a b'c".into(), "$HOME".into()],
        );
        assert!(
            c.starts_with("S=; [ \"$(id -u)\" = 0 ] || S='sudo -n'; exec $S sh -c "),
            "{c}"
        );
        if rustix::process::geteuid().is_root() {
            let out = Command::new("sh").arg("-c").arg(&c).output().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "/dev/disk/by-id/a b'c|$HOME|"
            );
        }
    }

    /// Runs the write script with a local `sh` against a file: the same bytes as a local
    /// flash, the marker checked.
    #[test]
    fn the_write_script_writes_what_the_plan_says() {
        use crate::flash::plan::tests::source_of;
        let img = crate::flash::gpt::tests::image_bytes(8 * MIB);
        let mut img = img;
        img[3 * MIB as usize..3 * MIB as usize + 5].copy_from_slice(b"hello");
        let src = source_of(&img);
        let dir = tempfile::tempdir().unwrap();
        let image_path = dir.path().join("i.raw");
        std::fs::write(&image_path, &img).unwrap();
        let image = File::open(&image_path).unwrap();
        let big = 32 * MIB;
        let target = dir.path().join("t.raw");
        let f = File::create(&target).unwrap();
        f.set_len(big).unwrap();
        let plan = super::super::plan::plan(&src, big, None, &[], COALESCE).unwrap();
        for codec in [Codec::Gzip, Codec::Plain] {
            let script = write_script(&plan, codec);
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(&script)
                .arg("sh")
                .arg(&target)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            {
                let mut enc = codec.encoder(child.stdin.take().unwrap()).unwrap();
                stream(&plan, &image, &mut enc, &mut |_| {}).unwrap();
            }
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            assert!(String::from_utf8_lossy(&out.stdout).contains("imagebuild-written"));
            let mut r = super::super::local::read_back(&plan, &target, &mut |_| {}).unwrap();
            assert_eq!(r.sha256, crate::cache::sha256(&img), "{codec:?}");
            r.bytes = 0;
        }
        // A stream that breaks off before the marker writes no partition table.
        std::fs::write(&target, vec![0u8; big as usize]).unwrap();
        let script = write_script(&plan, Codec::Plain);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg("sh")
            .arg(&target)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut all = Vec::new();
            stream(&plan, &image, &mut all, &mut |_| {}).unwrap();
            let cut = all.len()
                - super::super::gpt::PRIMARY_BYTES
                - super::super::gpt::BACKUP_BYTES
                - 100;
            child.stdin.take().unwrap().write_all(&all[..cut]).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("the stream broke off before the partition table")
        );
        assert!(crate::disk::read_table(&File::open(&target).unwrap()).is_err());
    }
}
