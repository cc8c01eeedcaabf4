//! Push and pull of releases through a real OCI registry: Debian's docker-registry on a
//! loopback port (scripts/test-registry.sh), a release built from a synthetic tarball
//! base, and a relay between the two that cuts the connection mid-push.

mod common;

use common::{Relay, Server, stdout_ok};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use imagebuild::profile::Arch;

/// The file holding blob `digest` in the storage of the registry `reg`.
fn blob_file(reg: &Server, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    reg.state
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// A project with profile `t` on the synthetic base: a release in out/ with its raw.zst.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let tar = imagebuild::testing::synthetic_base_tar(Arch::Amd64);
    std::fs::write(root.join("base.tar"), &tar).unwrap();
    // Incompressible content, so the image's zstd form spans several layers and chunks.
    let mut noise = Vec::with_capacity(3 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 3 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::create_dir_all(root.join("overlays/data/srv")).unwrap();
    std::fs::write(root.join("overlays/data/srv/noise.bin"), noise).unwrap();
    std::fs::create_dir_all(root.join("profiles")).unwrap();
    std::fs::write(
        root.join("profiles/t.toml"),
        format!(
            "[image]\nname = \"t\"\nversion = \"1.0\"\narch = \"amd64\"\nesp-size = \"40M\"\n\
             formats = [\"raw\", \"raw.zst\"]\n\n[base]\ntarball = \"base.tar\"\nsha256 = \"{}\"\n\n\
             [[overlay]]\npath = \"overlays/data\"\n",
            imagebuild::cache::sha256(&tar)
        ),
    )
    .unwrap();
    let o = imagebuild(root, &["build", "t"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    dir
}

fn imagebuild(project: &Path, args: &[&str]) -> Output {
    common::imagebuild(project, args, &[])
}

#[test]
fn push_resumes_after_a_cut_and_pull_gives_the_same_image() {
    let p = project();
    let root = p.path();
    let reg = Server::start("scripts/test-registry.sh");
    let relay = Relay::start(reg.port);
    let to = format!("oci://127.0.0.1:{}/os/t", relay.port);
    let push = |args: &[&str]| {
        let mut a = vec![
            "push",
            "t@1.0",
            &to,
            "--unverified",
            "--layer-size",
            "1M",
            "--chunk-size",
            "256K",
            "--json",
        ];
        a.extend_from_slice(args);
        imagebuild(root, &a)
    };
    let zst_len = std::fs::metadata(root.join("out/t/1.0/t-1.0.raw.zst"))
        .unwrap()
        .len();
    assert!(
        zst_len > 2 << 20,
        "the image's zstd form is {zst_len} bytes: too few layers"
    );

    // Cut after half the image went up: the push fails, naming the registry.
    relay.budget.store((zst_len / 2) as i64, Ordering::SeqCst);
    let cut = push(&[]);
    assert!(!cut.status.success(), "the cut push succeeded");
    let err = String::from_utf8_lossy(&cut.stderr);
    assert!(
        err.contains(&format!("registry 127.0.0.1:{}", relay.port)),
        "{err}"
    );
    assert!(err.contains("run the same command again"), "{err}");
    let before = relay.sent.load(Ordering::SeqCst);

    // The rerun sends only what the registry lacks: far less than the whole image.
    relay.budget.store(-1, Ordering::SeqCst);
    let out = stdout_ok(&push(&[]));
    let pushed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let resent = relay.sent.load(Ordering::SeqCst) - before;
    eprintln!(
        "cut after {before} bytes; the rerun sent {resent} bytes ({pushed}) of a {zst_len}-byte image"
    );
    assert!(pushed["skipped"].as_u64().unwrap() >= 1, "{pushed}");
    assert!(
        pushed["sent"].as_u64().unwrap() < zst_len * 3 / 4 && resent < zst_len * 3 / 4,
        "the rerun sent {resent} bytes of a {zst_len}-byte image: {pushed}"
    );
    // ... and the blob the cut broke off went on from the registry's offset: the first
    // layer (1 MiB) was skipped whole, and fewer bytes than the rest were sent.
    assert!(
        pushed["sent"].as_u64().unwrap() + (1 << 20) < zst_len,
        "the unfinished blob was sent again from its start: {pushed}"
    );
    let digest = pushed["digest"].as_str().unwrap().to_string();
    // A third push sends nothing and names the same manifest.
    let again: serde_json::Value = serde_json::from_str(&stdout_ok(&push(&[]))).unwrap();
    assert_eq!(again["sent"], 0, "{again}");
    assert_eq!(again["digest"].as_str(), Some(digest.as_str()));
    // latest-verified moves only to a release that passed a boot test.
    let refused = push(&["--latest-verified"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("t@1.0 has not passed a boot test: the tag latest-verified"),
        "{err}"
    );
    let record = std::fs::read_to_string(root.join("out/t/releases.json")).unwrap();
    assert!(
        record.contains("\"how\": \"pushed\"") && record.contains(&digest),
        "{record}"
    );

    // Pull by digest into an empty out/ and cache elsewhere: the same image, recorded.
    let there = tempfile::tempdir().unwrap();
    let from = format!("oci://127.0.0.1:{}/os/t@{digest}", reg.port);
    let pulled = stdout_ok(&imagebuild(there.path(), &["pull", &from]));
    let sha = imagebuild::cache::sha256_file(&root.join("out/t/1.0/t-1.0.raw")).unwrap();
    assert!(pulled.starts_with(&sha), "{pulled}");
    let raw = there.path().join("out/t/1.0/t-1.0.raw");
    assert_eq!(imagebuild::cache::sha256_file(&raw).unwrap(), sha);
    let record = std::fs::read_to_string(there.path().join("out/t/releases.json")).unwrap();
    assert!(
        record.contains("\"how\": \"pulled\"") && record.contains(&sha),
        "{record}"
    );
    // inspect takes the pulled release by name.
    stdout_ok(&imagebuild(there.path(), &["inspect", "t@1.0"]));

    // flash takes a registry reference: pulled, checked, written and read back.
    let elsewhere = tempfile::tempdir().unwrap();
    let disk = elsewhere.path().join("vm.img");
    let tag = format!("oci://127.0.0.1:{}/os/t:1.0", reg.port);
    let flashed = imagebuild(
        elsewhere.path(),
        &["flash", &tag, disk.to_str().unwrap(), "--unverified"],
    );
    let said = format!(
        "{}{}",
        stdout_ok(&flashed),
        String::from_utf8_lossy(&flashed.stderr)
    );
    assert!(said.contains(&sha), "{said}");
    assert_eq!(imagebuild::cache::sha256_file(&disk).unwrap(), sha);

    // A tampered blob in the registry's storage: pull fails naming it, publishes nothing.
    let manifest: serde_json::Value = {
        let url = format!("http://127.0.0.1:{}/v2/os/t/manifests/{digest}", reg.port);
        let o = Command::new("curl")
            .args([
                "-fsS",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                &url,
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let part = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let file = blob_file(&reg, &part);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1000] ^= 0x55;
    std::fs::write(&file, bytes).unwrap();
    let third = tempfile::tempdir().unwrap();
    let bad = imagebuild(third.path(), &["pull", &from]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains(&format!("blob {part}")) && err.contains("does not match its digest"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(third.path().join("out/t"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| n.to_string_lossy().starts_with('.') || n == "releases.json")
            && !third.path().join("out/t/1.0").exists(),
        "left in out/t: {left:?}"
    );
}
