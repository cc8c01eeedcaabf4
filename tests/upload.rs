//! `upload` to S3-compatible storage against moto's server (PyPI `moto[server]`, started
//! on loopback by scripts/test-moto.sh): a 640 MiB release in 16 MiB parts, cut halfway
//! by a relay and resumed, then uploaded again (nothing sent), read back whole.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use common::{Relay, Server, stdout_ok};
use imagebuild::profile::Arch;

const ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "imagebuild-test"),
    ("AWS_SECRET_ACCESS_KEY", "imagebuild-test"),
    ("AWS_REGION", "eu-central-1"),
    // No ~/.aws of the machine's.
    ("HOME", "/nonexistent"),
];

fn imagebuild(project: &Path, args: &[&str]) -> Output {
    common::imagebuild(project, args, ENV)
}

#[test]
fn upload_resumes_after_a_cut_and_sends_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let tar = imagebuild::testing::synthetic_base_tar(Arch::Amd64);
    std::fs::write(root.join("base.tar"), &tar).unwrap();
    std::fs::create_dir_all(root.join("profiles")).unwrap();
    std::fs::write(
        root.join("profiles/t.toml"),
        format!(
            "[image]\nname = \"t\"\nversion = \"1.0\"\narch = \"amd64\"\nsize = \"640M\"\n\
             esp-size = \"40M\"\n\n[base]\ntarball = \"base.tar\"\nsha256 = \"{}\"\n",
            imagebuild::cache::sha256(&tar)
        ),
    )
    .unwrap();
    stdout_ok(&imagebuild(root, &["build", "t"]));
    let raw = root.join("out/t/1.0/t-1.0.raw");
    let len = std::fs::metadata(&raw).unwrap().len();
    let sha = imagebuild::cache::sha256_file(&raw).unwrap();

    let moto = Server::start("scripts/test-moto.sh");
    let made = Command::new("curl")
        .args([
            "-fsS",
            "-X",
            "PUT",
            &format!("http://127.0.0.1:{}/images", moto.port),
        ])
        .status()
        .unwrap();
    assert!(made.success(), "creating the bucket");
    let relay = Relay::start(moto.port);
    let endpoint = format!("http://127.0.0.1:{}", relay.port);
    let upload = || {
        imagebuild(
            root,
            &[
                "upload",
                "t@1.0",
                "s3://images/prod/",
                "--endpoint",
                &endpoint,
                "--unverified",
                "--part-size",
                "16M",
                "--json",
            ],
        )
    };

    // Cut after 40% of the image: the upload fails, naming the service and what to do.
    relay.budget.store((len * 2 / 5) as i64, Ordering::SeqCst);
    let cut = upload();
    assert!(!cut.status.success(), "the cut upload succeeded");
    let err = String::from_utf8_lossy(&cut.stderr);
    assert!(
        err.contains(&format!("S3 {endpoint}")) && err.contains("UploadPart"),
        "{err}"
    );
    assert!(err.contains("run the same command again"), "{err}");

    // The rerun skips the parts the store has and sends the rest.
    relay.budget.store(-1, Ordering::SeqCst);
    let before = relay.sent.load(Ordering::SeqCst);
    let done: serde_json::Value = serde_json::from_str(&stdout_ok(&upload())).unwrap();
    let resent = relay.sent.load(Ordering::SeqCst) - before;
    eprintln!("rerun: {done}; {resent} bytes on the wire for a {len}-byte image");
    assert_eq!(done["parts"], 40, "{done}");
    assert!(done["parts_skipped"].as_u64().unwrap() >= 10, "{done}");
    assert!(
        resent < len * 2 / 3,
        "the rerun sent {resent} of {len} bytes"
    );
    let etag = done["etag"].as_str().unwrap().to_string();
    assert!(etag.ends_with("-40\""), "{etag}");

    // Again: the object holds the release (its recorded sha256): nothing is sent.
    let before = relay.sent.load(Ordering::SeqCst);
    let again: serde_json::Value = serde_json::from_str(&stdout_ok(&upload())).unwrap();
    assert_eq!(again["already"], true, "{again}");
    assert!(relay.sent.load(Ordering::SeqCst) - before < 4096);

    // The object is the image, byte for byte, and the record says where it went.
    let url = format!("http://127.0.0.1:{}/images/prod/t-1.0.raw", moto.port);
    let got = Command::new("sh")
        .arg("-c")
        .arg(format!("curl -fsS '{url}' | sha256sum"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&got.stdout).starts_with(&sha));
    let record = std::fs::read_to_string(root.join("out/t/releases.json")).unwrap();
    assert!(
        record.contains("\"how\": \"uploaded\"")
            && record.contains("s3://images/prod/t-1.0.raw")
            && record.contains(&etag.replace('"', "\\\"")),
        "{record}"
    );
}
