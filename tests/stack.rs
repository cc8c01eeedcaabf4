//! Fast tier for `[[stack]]`: Docker Compose stacks baked from a local OCI archive the test
//! builds itself into an image on a synthetic tarball base, read back from the ext4; bad
//! input with its messages; pulls from an in-process registry stub on 127.0.0.1 for the
//! token flow and the digest checks. No network, seconds.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use imagebuild::build::{BuildOptions, Built, build};
use imagebuild::cache::{Cache, sha256};
use imagebuild::host::Host;
use imagebuild::inspect::Image;
use imagebuild::profile::{Arch, Project};
use imagebuild::progress::Silent;
use imagebuild::stack::ocibuild::{self, OciImage};
use imagebuild::stack::reference::Digest;
use imagebuild::testing::{fake_elf, synthetic_base_tar_with_packages};

const DOCKER: &[(&str, &str)] = &[
    ("base-files", "13.8"),
    ("docker.io", "26.1.5"),
    ("docker-cli", "26.1.5"),
    ("docker-compose", "2.26.1"),
];

fn image(arches: &[Arch]) -> OciImage {
    let specs: Vec<_> = arches
        .iter()
        .map(|a| ocibuild::hello_spec(*a, fake_elf(a.elf_machine()), 1_700_000_000))
        .collect();
    ocibuild::build(&specs).unwrap()
}

struct Project_ {
    dir: tempfile::TempDir,
}

impl Project_ {
    /// A project with profile `t` (arch `arch`) and stack `web` from stacks/web/compose.yaml.
    fn new(arch: Arch, packages: &[(&str, &str)], compose: &str, stack_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let tgz = gzip(&synthetic_base_tar_with_packages(arch, packages));
        std::fs::write(root.join("base.tar.gz"), &tgz).unwrap();
        for (p, text) in [
            ("stacks/web/compose.yaml", compose),
            ("stacks/web/app.env", "GREETING=hi\n"),
            ("stacks/web/html/index.html", "<p>hi</p>\n"),
            ("stacks/web/.env", "COMPOSE_X=1\n"),
        ] {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        std::fs::create_dir_all(root.join("profiles")).unwrap();
        let profile = format!(
            "[image]\nname = \"test\"\nversion = \"1.0\"\narch = \"{arch}\"\nesp-size = \"40M\"\n\n[base]\ntarball = \"base.tar.gz\"\nsha256 = \"{}\"\n\n[[stack]]\nname = \"web\"\ncompose = \"stacks/web/compose.yaml\"\n{stack_extra}",
            sha256(&tgz)
        );
        std::fs::write(root.join("profiles/t.toml"), profile).unwrap();
        Project_ { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn put_archive(&self, img: &OciImage, tag: &str) {
        std::fs::create_dir_all(self.root().join("images")).unwrap();
        std::fs::write(
            self.root().join("images/app.oci.tar"),
            img.layout_tar(tag).unwrap(),
        )
        .unwrap();
    }

    fn build(&self, out: &str, cache: &str) -> anyhow::Result<Built> {
        let opts = BuildOptions {
            out_root: self.root().join(out),
            cache: Cache::new(self.root().join(cache)),
            verify: None,
            expect_sha256: None,
            relock: false,
            replace: false,
        };
        build(
            &Host::new(false),
            &Project::new(self.root()),
            "t",
            &opts,
            &Silent,
        )
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn compose(image: &str) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    env_file: app.env\n    ports:\n      - \"8080:8080\"\n    volumes:\n      - ./html:/www:ro\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n"
    )
}

const ARCHIVE: &str = "oci-archives = [\"images/app.oci.tar\"]\n";

fn error_text(e: &anyhow::Error) -> String {
    format!("{e:#}\nhints: {:?}", imagebuild::error::hints(e))
}

/// Entries of a tar, path -> bytes.
fn tar_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>, u64, u64)> {
    let mut a = tar::Archive::new(bytes);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let (mtime, uid) = (e.header().mtime().unwrap(), e.header().uid().unwrap());
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            (p, v, mtime, uid)
        })
        .collect()
}

#[test]
fn stack_from_a_local_archive_is_baked_and_reads_back() {
    let img = image(&[Arch::Amd64, Arch::Arm64]);
    let pinned = format!("registry.example/hello:1@{}", img.index_digest);
    let p = Project_::new(Arch::Arm64, DOCKER, &compose(&pinned), ARCHIVE);
    p.put_archive(&img, "1");
    let built = p.build("out", "cache").unwrap();
    let fs = Image::open(&built.image).unwrap().root().unwrap();
    let dir = "/etc/imagebuild/stacks/web";
    assert_eq!(
        fs.read_to_string(&format!("{dir}/compose.yaml")).unwrap(),
        compose(&pinned)
    );
    assert_eq!(
        fs.read_to_string(&format!("{dir}/app.env")).unwrap(),
        "GREETING=hi\n"
    );
    assert_eq!(
        fs.read_to_string(&format!("{dir}/html/index.html"))
            .unwrap(),
        "<p>hi</p>\n"
    );
    assert_eq!(
        fs.read_to_string(&format!("{dir}/.env")).unwrap(),
        "COMPOSE_X=1\n"
    );
    let hex = img.index_digest.hex();
    let tag = format!("registry.example/hello:imagebuild-sha256-{hex}");
    let over = fs
        .read_to_string(&format!("{dir}/compose.imagebuild.yaml"))
        .unwrap();
    assert!(
        over.contains(&format!(
            "  \"web\":\n    image: \"{tag}\"\n    pull_policy: never\n"
        )),
        "{over}"
    );

    // The archive: sorted, root-owned, epoch mtimes, the arm64 manifest, docker's manifest.json.
    let archive = fs
        .read(&format!("/var/lib/imagebuild/images/{hex}.tar"))
        .unwrap();
    let entries = tar_entries(&archive);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.last(), Some(&"oci-layout"));
    assert!(entries.iter().all(|e| e.2 == 1_767_225_600 && e.3 == 0));
    let arm = &img
        .manifests
        .iter()
        .find(|(a, _)| *a == Arch::Arm64)
        .unwrap()
        .1;
    let index: serde_json::Value =
        serde_json::from_slice(&entries.iter().find(|e| e.0 == "index.json").unwrap().1).unwrap();
    assert_eq!(index["manifests"][0]["digest"], arm.to_string());
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        tag
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&entries.iter().find(|e| e.0 == "manifest.json").unwrap().1)
            .unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], tag);
    for (path, bytes, ..) in &entries {
        if let Some(h) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            assert_eq!(Digest::of(bytes).hex(), h, "every blob matches its name");
        }
    }
    let config_path = manifest[0]["Config"].as_str().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&entries.iter().find(|e| e.0 == config_path).unwrap().1).unwrap();
    assert_eq!(config["architecture"], "arm64");

    // Units, the loader, docker enabled only if present (the synthetic base has no unit).
    let unit = fs
        .read_to_string("/usr/lib/systemd/system/imagebuild-stack-web.service")
        .unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/docker compose -p web -f /etc/imagebuild/stacks/web/compose.yaml -f /etc/imagebuild/stacks/web/compose.imagebuild.yaml up --detach --wait --pull never"), "{unit}");
    assert!(
        unit.contains("Requires=docker.service imagebuild-images.service"),
        "{unit}"
    );
    assert_eq!(
        fs.read_link("/etc/systemd/system/multi-user.target.wants/imagebuild-stack-web.service")
            .unwrap()
            .to_str()
            .unwrap(),
        "/usr/lib/systemd/system/imagebuild-stack-web.service"
    );
    let loader = fs
        .read_to_string("/usr/lib/imagebuild/load-images")
        .unwrap();
    assert!(loader.contains(&format!("load {hex} {tag}\n")), "{loader}");
    assert!(
        fs.read_to_string("/usr/lib/systemd/system/imagebuild-images.service")
            .unwrap()
            .contains("After=docker.service")
    );
    let health = fs.read_to_string("/usr/lib/imagebuild/health").unwrap();
    assert!(
        health.contains("check_stack '\"stack web\"' web web:healthy"),
        "{health}"
    );

    // Determinism: a second build from the cache and a third with a fresh cache.
    let again = p.build("out2", "cache").unwrap();
    let fresh = p.build("out3", "cache2").unwrap();
    assert_eq!(built.sha256, again.sha256);
    assert_eq!(built.sha256, fresh.sha256);
}

#[test]
fn docker_service_is_enabled_when_the_image_has_it() {
    // The synthetic base has no docker.service: no link. (Covered in the read-back test.)
    // Here: an overlay gives the unit file, the link appears.
    let img = image(&[Arch::Amd64]);
    let pinned = format!("registry.example/hello@{}", img.index_digest);
    let p = Project_::new(
        Arch::Amd64,
        DOCKER,
        &compose(&pinned),
        &format!("{ARCHIVE}\n[[overlay]]\npath = \"ov\"\n"),
    );
    p.put_archive(&img, "1");
    let unit = p.root().join("ov/usr/lib/systemd/system/docker.service");
    std::fs::create_dir_all(unit.parent().unwrap()).unwrap();
    std::fs::write(&unit, "[Unit]\n").unwrap();
    let built = p.build("out", "cache").unwrap();
    let fs = Image::open(&built.image).unwrap().root().unwrap();
    assert_eq!(
        fs.read_link("/etc/systemd/system/multi-user.target.wants/docker.service")
            .unwrap()
            .to_str()
            .unwrap(),
        "/usr/lib/systemd/system/docker.service"
    );
}

#[test]
fn bad_stacks_fail_with_file_line_and_fix() {
    let img = image(&[Arch::Amd64]);
    let amd = format!("registry.example/hello:1@{}", img.index_digest);

    // Compose file missing: the profile line.
    let p = Project_::new(Arch::Amd64, DOCKER, "", ARCHIVE);
    std::fs::remove_file(p.root().join("stacks/web/compose.yaml")).unwrap();
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(
        e.contains(
            "profiles/t.toml:13: compose file stacks/web/compose.yaml of stack `web` does not exist"
        ),
        "{e}"
    );

    // Not YAML: the compose file and line.
    let p = Project_::new(
        Arch::Amd64,
        DOCKER,
        "services:\n  web:\n    image: a\n  oops\n",
        ARCHIVE,
    );
    p.put_archive(&img, "1");
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(e.contains("stacks/web/compose.yaml:4: "), "{e}");

    // build: present.
    let p = Project_::new(
        Arch::Amd64,
        DOCKER,
        &format!("services:\n  web:\n    image: {amd}\n    build: .\n"),
        ARCHIVE,
    );
    p.put_archive(&img, "1");
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(
        e.contains("stacks/web/compose.yaml:4: service `web` has `build:`"),
        "{e}"
    );

    // A tag without digest: the hint prints the digest to pin (resolved from the archive).
    let p = Project_::new(
        Arch::Amd64,
        DOCKER,
        &compose("registry.example/hello:1"),
        ARCHIVE,
    );
    p.put_archive(&img, "1");
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(e.contains("stacks/web/compose.yaml:3: image `registry.example/hello:1` of service `web` is not pinned by digest"), "{e}");
    assert!(
        e.contains(&format!(
            "image: registry.example/hello:1@{}",
            img.index_digest
        )),
        "{e}"
    );
    assert!(e.contains("allow-unpinned = true"), "{e}");

    // ... unless allow-unpinned: baked as resolved.
    let p = Project_::new(
        Arch::Amd64,
        DOCKER,
        &compose("registry.example/hello:1"),
        &format!("allow-unpinned = true\n{ARCHIVE}"),
    );
    p.put_archive(&img, "1");
    let built = p.build("out", "cache").unwrap();
    let log = std::fs::read_to_string(built.dir.join("build.log")).unwrap();
    assert!(
        log.contains(&format!("resolved to {}", img.index_digest)),
        "{log}"
    );

    // Not available for the architecture: the platforms the index has.
    let p = Project_::new(Arch::Arm64, DOCKER, &compose(&amd), ARCHIVE);
    p.put_archive(&img, "1");
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(
        e.contains("has no linux/arm64 image; the index has: linux/amd64"),
        "{e}"
    );

    // A referenced file missing.
    let p = Project_::new(
        Arch::Amd64,
        DOCKER,
        &compose(&amd).replace("app.env", "gone.env"),
        ARCHIVE,
    );
    p.put_archive(&img, "1");
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(
        e.contains(
            "stacks/web/compose.yaml: env_file of service web: stacks/web/gone.env does not exist"
        ),
        "{e}"
    );

    // No docker in the image.
    let p = Project_::new(
        Arch::Amd64,
        &[("base-files", "13.8")],
        &compose(&amd),
        ARCHIVE,
    );
    p.put_archive(&img, "1");
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(
        e.contains(
            "stack `web` needs docker, but the image does not have docker.io, docker-cli, docker-compose"
        ),
        "{e}"
    );
    assert!(
        e.contains(
            r#"add \"docker.io\", \"docker-cli\", \"docker-compose\" to [packages] include"#
        ),
        "{e}"
    );

    // A bad stack name.
    let p = Project_::new(Arch::Amd64, DOCKER, &compose(&amd), "");
    let text = std::fs::read_to_string(p.root().join("profiles/t.toml")).unwrap();
    std::fs::write(
        p.root().join("profiles/t.toml"),
        text.replace("name = \"web\"", "name = \"Web App\""),
    )
    .unwrap();
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(
        e.contains("stack name `Web App` is not a compose project name"),
        "{e}"
    );
}

/// A registry on 127.0.0.1: serves `blobs` by digest (manifests too) and tag `1`, asks for a
/// Bearer token first; `lie` serves other bytes for one digest.
struct Stub {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

fn stub(img: &OciImage, lie: Option<Digest>) -> Stub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let blobs: HashMap<String, Vec<u8>> = img
        .blobs
        .iter()
        .map(|(d, b)| (d.to_string(), b.clone()))
        .collect();
    let index = img.index.clone();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut authorized = false;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                authorized |= h
                    .to_ascii_lowercase()
                    .starts_with("authorization: bearer t0k");
            }
            seen.lock().unwrap().push(path.clone());
            let (status, body): (&str, Vec<u8>) = if path.starts_with("/token?") {
                ("200 OK", br#"{"token":"t0k"}"#.to_vec())
            } else if !authorized {
                ("401 Unauthorized", Vec::new())
            } else {
                let reference = path.rsplit('/').next().unwrap_or("");
                let found = if reference == "1" {
                    Some(index.clone())
                } else {
                    blobs.get(reference).cloned()
                };
                match found {
                    Some(b) if lie.as_ref().is_some_and(|l| l.to_string() == reference) => {
                        let mut b = b;
                        b[0] ^= 1;
                        ("200 OK", b)
                    }
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", Vec::new()),
                }
            };
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"stub\",scope=\"repository:hello:pull\"\r\n"
            );
            let extra = if status.starts_with("401") {
                challenge.as_str()
            } else {
                ""
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
    });
    Stub { port, requests }
}

#[test]
fn pulls_through_the_token_flow_and_checks_every_digest() {
    let img = image(&[Arch::Amd64, Arch::Arm64]);
    let s = stub(&img, None);
    let pinned = format!("127.0.0.1:{}/hello:1@{}", s.port, img.index_digest);
    let p = Project_::new(Arch::Amd64, DOCKER, &compose(&pinned), "");
    let built = p.build("out", "cache").unwrap();
    let reqs = s.requests.lock().unwrap().clone();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("/token?scope=repository%3Ahello%3Apull&service=stub")),
        "{reqs:?}"
    );
    assert!(
        reqs.contains(&format!("/v2/hello/manifests/{}", img.index_digest)),
        "{reqs:?}"
    );
    // Rebuild: from the cache, no request.
    let n = reqs.len();
    let again = p.build("out2", "cache").unwrap();
    assert_eq!(
        s.requests.lock().unwrap().len(),
        n,
        "a rebuild pulls nothing"
    );
    assert_eq!(built.sha256, again.sha256);

    // A tag without digest: the hint has the digest from the registry.
    let p = Project_::new(
        Arch::Amd64,
        DOCKER,
        &compose(&format!("127.0.0.1:{}/hello:1", s.port)),
        "",
    );
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(
        e.contains(&format!(
            "image: 127.0.0.1:{}/hello:1@{}",
            s.port, img.index_digest
        )),
        "{e}"
    );
}

#[test]
fn a_registry_that_lies_is_caught() {
    let img = image(&[Arch::Amd64]);
    // The index itself.
    let s = stub(&img, Some(img.index_digest.clone()));
    let pinned = format!("127.0.0.1:{}/hello:1@{}", s.port, img.index_digest);
    let p = Project_::new(Arch::Amd64, DOCKER, &compose(&pinned), "");
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(
        e.contains(&format!(
            "127.0.0.1:{} sent a manifest with digest sha256:",
            s.port
        )),
        "{e}"
    );
    assert!(e.contains(&format!("expected {}", img.index_digest)), "{e}");
    // A layer.
    let layer = img
        .blobs
        .iter()
        .find(|(_, b)| b.starts_with(&[0x1f, 0x8b]))
        .unwrap()
        .0
        .clone();
    let s = stub(&img, Some(layer.clone()));
    let pinned = format!("127.0.0.1:{}/hello:1@{}", s.port, img.index_digest);
    let p = Project_::new(Arch::Amd64, DOCKER, &compose(&pinned), "");
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(e.contains(&format!("blob {layer}")), "{e}");
    assert!(e.contains("has digest sha256:"), "{e}");
    // Unknown digest.
    let other = Digest::of(b"nothing");
    let pinned = format!("127.0.0.1:{}/hello:1@{other}", s.port);
    let p = Project_::new(Arch::Amd64, DOCKER, &compose(&pinned), "");
    let e = error_text(&p.build("out", "cache").unwrap_err());
    assert!(
        e.contains(&format!("has no manifest {other} for hello")),
        "{e}"
    );
}

/// E2E material, run by hand or by the e2e tier: `IMAGEBUILD_E2E_HELLO` is the pinned
/// reference scripts/hello-image.sh pushed to the registry scripts/test-registry.sh
/// started (`127.0.0.1:5000/hello:1@sha256:...`). Builds amd64 and arm64 images on the
/// synthetic base from the real registry, cold and then warm, and prints bytes and seconds.
#[test]
#[ignore = "needs scripts/test-registry.sh and scripts/hello-image.sh"]
fn real_registry_pull_for_both_arches() {
    let reference = std::env::var("IMAGEBUILD_E2E_HELLO").expect("IMAGEBUILD_E2E_HELLO");
    let hex = reference.rsplit_once("@sha256:").unwrap().1.to_string();
    for arch in [Arch::Amd64, Arch::Arm64] {
        let p = Project_::new(arch, DOCKER, &compose(&reference), "");
        let t = std::time::Instant::now();
        let cold = p.build("out", "cache").unwrap();
        let cold_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let warm = p.build("out2", "cache").unwrap();
        let warm_s = t.elapsed().as_secs_f64();
        assert_eq!(cold.sha256, warm.sha256);
        let fs = Image::open(&cold.image).unwrap().root().unwrap();
        let archive = fs
            .read(&format!("/var/lib/imagebuild/images/{hex}.tar"))
            .unwrap();
        let entries = tar_entries(&archive);
        let manifest: serde_json::Value =
            serde_json::from_slice(&entries.iter().find(|e| e.0 == "manifest.json").unwrap().1)
                .unwrap();
        let config_path = manifest[0]["Config"].as_str().unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&entries.iter().find(|e| e.0 == config_path).unwrap().1)
                .unwrap();
        assert_eq!(config["architecture"], arch.debian());
        let log = std::fs::read_to_string(cold.dir.join("build.log")).unwrap();
        let stack_s = cold
            .timings
            .0
            .iter()
            .find(|(n, _)| n == "stacks")
            .unwrap()
            .1;
        let warm_stack_s = warm
            .timings
            .0
            .iter()
            .find(|(n, _)| n == "stacks")
            .unwrap()
            .1;
        eprintln!(
            "{arch}: archive {} bytes; stacks stage cold {stack_s:.2} s, warm {warm_stack_s:.2} s; build cold {cold_s:.2} s, warm {warm_s:.2} s; image sha256 {}",
            archive.len(),
            cold.sha256
        );
        for l in log.lines().filter(|l| l.starts_with("stack: ")) {
            eprintln!("  {l}");
        }
    }
}
