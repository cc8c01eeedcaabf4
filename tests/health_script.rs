//! Runs the generated health script under this host's bash, with a fake `systemctl`
//! (IMAGEBUILD_SYSTEMCTL) and the host's or a fixture's /proc/net (IMAGEBUILD_PROC_NET).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use imagebuild::verify::health::{self, Check, CheckKind, GeneratedFile, HealthReport};
use tempfile::TempDir;

/// Answers `is-active` with `active` for the units in FAKE_ACTIVE (space separated),
/// `list-jobs` with FAKE_JOBS and `list-units --failed` with FAKE_FAILED.
const FAKE_SYSTEMCTL: &str = r#"#!/bin/sh
case "$1" in
list-jobs) printf '%s' "${FAKE_JOBS:-}" ;;
list-units) printf '%s' "${FAKE_FAILED:-}" ;;
is-active)
	[ "$2" = "--" ] && shift
	case " ${FAKE_ACTIVE:-} " in
	*" $2 "*) echo active ;;
	*) echo inactive; exit 3 ;;
	esac ;;
*) exit 1 ;;
esac
"#;

struct Run {
    report: HealthReport,
    healthy: bool,
    stdout: String,
}

struct Harness {
    dir: TempDir,
    env: Vec<(String, String)>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let systemctl = dir.path().join("systemctl");
        std::fs::write(&systemctl, FAKE_SYSTEMCTL).unwrap();
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut harness = Harness {
            dir,
            env: Vec::new(),
        };
        harness.set("IMAGEBUILD_SYSTEMCTL", systemctl.to_str().unwrap());
        harness.set("IMAGEBUILD_CONSOLE", "");
        harness.set("IMAGEBUILD_SETTLE_TIMEOUT", "5");
        harness
    }

    fn set(&mut self, key: &str, value: &str) -> &mut Harness {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, image: &str, checks: &[Check]) -> Run {
        let script = self.write_script(image, checks);
        let output = self.execute(&script);
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stdout.lines().count(),
            1,
            "one line; stdout: {stdout}; stderr: {stderr}"
        );
        let report = health::parse_health_line(&stdout)
            .unwrap_or_else(|| panic!("not a health line: {stdout}; stderr: {stderr}"));
        Run {
            report,
            healthy: output.status.success(),
            stdout,
        }
    }

    fn write_script(&self, image: &str, checks: &[Check]) -> PathBuf {
        let files = health::image_files(image, "2026.11.1", checks);
        let GeneratedFile::File { contents, .. } = &files[0] else {
            panic!("the script comes first")
        };
        let script = self.path("health");
        std::fs::write(&script, contents).unwrap();
        script
    }

    fn execute(&self, script: &Path) -> Output {
        let mut command = Command::new("bash");
        command.arg(script).env_remove("LANG");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.output().unwrap()
    }
}

fn checks(toml_text: &str) -> Vec<Check> {
    #[derive(serde::Deserialize)]
    struct Profile {
        check: Vec<Check>,
    }
    toml::from_str::<Profile>(toml_text).unwrap().check
}

fn results(report: &HealthReport) -> BTreeMap<String, (bool, String)> {
    report
        .checks
        .iter()
        .map(|c| (c.check.clone(), (c.ok, c.detail.clone())))
        .collect()
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves GET /ok with 200 and everything else with 500, on 127.0.0.1.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            answer(stream);
        }
    });
    port
}

fn answer(mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    reader.read_line(&mut request).unwrap();
    let mut header = String::new();
    while reader.read_line(&mut header).unwrap() > 0 && header != "\r\n" {
        header.clear();
    }
    let status = if request.starts_with("GET /ok HTTP/1.0") {
        "200 OK"
    } else {
        "500 Oops"
    };
    write!(stream, "HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n").unwrap();
}

#[test]
fn each_check_kind_reports_ok_and_not_ok() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = closed_port();
    let web = http_server();
    let mut list = checks(&format!(
        r#"
        [[check]]
        tcp = {open}
        [[check]]
        tcp = {closed}
        [[check]]
        http = "http://127.0.0.1:{web}/ok"
        [[check]]
        http = "http://127.0.0.1:{web}/broken"
        [[check]]
        http = "http://127.0.0.1:{web}/broken"
        status = 500
        [[check]]
        http = "http://127.0.0.1:{closed}/ok"
        [[check]]
        command = "true"
        [[check]]
        command = "false"
        [[check]]
        command = "exit 7"
        [[check]]
        unit = "ssh.service"
        [[check]]
        unit = "docker.service"
        "#
    ));
    list.push(Check {
        kind: CheckKind::Unit("we\"ird\\.service".into()),
    });
    let mut harness = Harness::new();
    harness.set("IMAGEBUILD_PROC_NET", "/proc/net");
    harness.set("FAKE_ACTIVE", "ssh.service we\"ird\\.service");

    let run = harness.run("prod", &list);

    let wanted: BTreeMap<String, (bool, String)> = [
        (format!("tcp {open}"), true, "listening"),
        (format!("tcp {closed}"), false, "not listening"),
        (
            format!("http http://127.0.0.1:{web}/ok 200"),
            true,
            "status 200",
        ),
        (
            format!("http http://127.0.0.1:{web}/broken 200"),
            false,
            "status 500",
        ),
        (
            format!("http http://127.0.0.1:{web}/broken 500"),
            true,
            "status 500",
        ),
        (
            format!("http http://127.0.0.1:{closed}/ok 200"),
            false,
            "no response",
        ),
        ("command true".into(), true, "exit 0"),
        ("command false".into(), false, "exit 1"),
        ("command exit 7".into(), false, "exit 7"),
        ("unit ssh.service".into(), true, "active"),
        ("unit docker.service".into(), false, "inactive"),
        ("unit we\"ird\\.service".into(), true, "active"),
    ]
    .into_iter()
    .map(|(label, ok, detail)| (label, (ok, detail.to_owned())))
    .collect();
    assert_eq!(results(&run.report), wanted, "{}", run.stdout);
    assert_eq!(
        run.report.checks.len(),
        list.len(),
        "one result per check, in order"
    );
    assert!(!run.healthy, "failing checks make the script exit 1");
    assert!(
        run.stdout
            .starts_with("IMAGEBUILD-HEALTH {\"image\":\"prod\",\"version\":\"2026.11.1\"")
    );
    drop(listener);
}

#[test]
fn a_healthy_image_exits_zero() {
    let mut harness = Harness::new();
    harness.set("FAKE_ACTIVE", "ssh.service");
    let run = harness.run(
        "prod",
        &checks("[[check]]\nunit = \"ssh.service\"\n[[check]]\ncommand = \"test -d /\"\n"),
    );
    assert!(run.healthy, "{}", run.stdout);
    assert!(run.report.checks.iter().all(|c| c.ok));
    assert!(run.report.failed_units.is_empty() && run.report.pending_jobs.is_empty());
}

#[test]
fn failed_units_are_listed_and_escaped() {
    let mut harness = Harness::new();
    harness.set(
        "FAKE_FAILED",
        "bad\"\\x2dname.service loaded failed failed Bad\n\u{25cf} other.service loaded failed failed Other\n",
    );
    let run = harness.run("prod", &[]);
    assert_eq!(
        run.report.failed_units,
        ["bad\"\\x2dname.service", "other.service"]
    );
    assert!(!run.healthy);
}

#[test]
fn image_and_version_are_escaped() {
    let run = Harness::new().run("pr\"od\\ \u{e9}\t", &[]);
    assert_eq!(run.report.image, "pr\"od\\ \u{e9}\t");
    assert!(run.healthy);
}

#[test]
fn the_hostname_is_the_kernels_when_the_report_is_made() {
    let run = Harness::new().run("prod", &[]);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(run.report.hostname.as_deref(), Some(kernel.trim_end()));
    assert!(
        run.stdout.starts_with(
            "IMAGEBUILD-HEALTH {\"image\":\"prod\",\"version\":\"2026.11.1\",\"hostname\":"
        ),
        "{}",
        run.stdout
    );
    let mut harness = Harness::new();
    let file = harness.path("hostname");
    std::fs::write(&file, "web-3\n").unwrap();
    harness.set("IMAGEBUILD_HOSTNAME_FILE", file.to_str().unwrap());
    assert_eq!(
        harness.run("prod", &[]).report.hostname.as_deref(),
        Some("web-3")
    );
    // Unreadable: reported empty, and the report is still made.
    let mut harness = Harness::new();
    harness.set("IMAGEBUILD_HOSTNAME_FILE", "/nonexistent");
    let run = harness.run("prod", &[]);
    assert_eq!(run.report.hostname.as_deref(), Some(""));
    assert!(run.healthy);
}

#[test]
fn pending_jobs_are_reported_after_the_settle_timeout() {
    let mut harness = Harness::new();
    harness.set("IMAGEBUILD_SETTLE_TIMEOUT", "1");
    harness.set(
        "FAKE_JOBS",
        "  7 stuck.service               start running\n 12 imagebuild-health.service   start running\n",
    );
    let started = Instant::now();
    let run = harness.run("prod", &[]);
    let waited = started.elapsed();
    assert_eq!(
        run.report.pending_jobs,
        ["stuck.service"],
        "its own job is not pending"
    );
    assert!(!run.healthy);
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[test]
fn tcp_check_reads_ipv6_listeners_and_ignores_other_states() {
    let mut harness = Harness::new();
    let proc_net = harness.path("net");
    std::fs::create_dir(&proc_net).unwrap();
    let header = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    std::fs::write(proc_net.join("tcp"), format!("{header}   0: 0100007F:0016 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1 1\n")).unwrap();
    std::fs::write(proc_net.join("tcp6"), format!("{header}   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1\n")).unwrap();
    harness.set("IMAGEBUILD_PROC_NET", proc_net.to_str().unwrap());
    let run = harness.run(
        "prod",
        &checks("[[check]]\ntcp = 8080\n[[check]]\ntcp = 22\n"),
    );
    let ok: Vec<bool> = run.report.checks.iter().map(|c| c.ok).collect();
    assert_eq!(ok, [true, false], "{}", run.stdout);
}

#[test]
fn the_console_line_stays_under_4_kib() {
    let mut harness = Harness::new();
    let console = harness.path("console");
    harness.set("IMAGEBUILD_CONSOLE", console.to_str().unwrap());
    let failed: String = (0..20)
        .map(|i| {
            format!(
                "systemd-fsck@dev-disk-by\\x2duuid-{i:04}-{}.service loaded failed failed X\n",
                "a".repeat(90)
            )
        })
        .collect();
    harness.set("FAKE_FAILED", &failed);
    let mut toml_text = String::new();
    for i in 0..50 {
        let command = if i % 3 == 0 { "false" } else { "true" };
        toml_text.push_str(&format!(
            "[[check]]\ncommand = \"{command} # check number {i} {}\"\n",
            "x".repeat(80)
        ));
    }
    let run = harness.run("prod", &checks(&toml_text));

    let line = std::fs::read_to_string(&console).unwrap();
    assert!(line.len() < 4096, "console line of {} bytes", line.len());
    let report = health::parse_health_line(&line).unwrap();
    assert_eq!(report.failed_units.len(), 7);
    assert_eq!(report.failed_units[6], "+14 more");
    assert!(report.failed_units[0].len() <= 96);
    assert_eq!(report.checks.len(), 17, "only the failing checks");
    assert!(report.checks.iter().all(|c| !c.ok));
    assert_eq!(run.report.checks.len(), 50, "the journal gets every check");
}

/// `docker ps` lists FAKE_IDS for project FAKE_PROJECT; `docker inspect` prints FAKE_STATES.
const FAKE_DOCKER: &str = r#"#!/bin/sh
case "$1" in
ps)
	case "$*" in
	*"label=com.docker.compose.project=${FAKE_PROJECT:-}"*) printf '%s\n' ${FAKE_IDS:-} ;;
	esac ;;
inspect) printf '%s' "${FAKE_STATES:-}" ;;
*) exit 1 ;;
esac
"#;

#[test]
fn stack_check_wants_every_service_running_and_healthy_where_defined() {
    let mut h = Harness::new();
    let docker = h.path("docker");
    std::fs::write(&docker, FAKE_DOCKER).unwrap();
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    h.set("IMAGEBUILD_DOCKER", docker.to_str().unwrap());
    h.set("IMAGEBUILD_STACK_TIMEOUT", "0");
    h.set("FAKE_PROJECT", "web");
    let stack = |services: &[(&str, bool)]| Check {
        kind: CheckKind::Stack {
            project: "web".into(),
            services: services.iter().map(|(s, h)| (s.to_string(), *h)).collect(),
        },
    };
    let ready = stack(&[("app", true), ("worker", false)]);

    h.set("FAKE_IDS", "a1 b2");
    h.set("FAKE_STATES", "app running healthy\nworker running none\n");
    let run = h.run("prod", std::slice::from_ref(&ready));
    assert!(run.healthy, "{}", run.stdout);
    assert_eq!(
        results(&run.report)["stack web"],
        (true, "2 services ready".into())
    );

    h.set("FAKE_STATES", "app running starting\nworker exited none\n");
    let run = h.run("prod", std::slice::from_ref(&ready));
    assert!(!run.healthy);
    assert_eq!(
        results(&run.report)["stack web"],
        (false, "app: starting, worker: exited".into())
    );

    h.set("FAKE_IDS", "");
    let run = h.run("prod", &[stack(&[("app", false)])]);
    assert_eq!(
        results(&run.report)["stack web"],
        (false, "app: no container".into())
    );
}

/// `findmnt -n -o COLUMNS --mountpoint PATH` from FAKE_MOUNTS, one mount a line:
/// `PATH MAJ:MIN LABEL FSROOT` (`-` for no label).
const FAKE_FINDMNT: &str = r#"#!/bin/sh
[ "$1 $2 $4" = "-n -o --mountpoint" ] || exit 64
printf '%s\n' "${FAKE_MOUNTS:-}" | while read -r path dev label root; do
	[ "$path" = "$5" ] || continue
	[ "$label" = - ] && label=
	case $3 in
	MAJ:MIN,LABEL) echo "$dev $label" ;;
	MAJ:MIN,FSROOT) echo "$dev $root" ;;
	*) exit 64 ;;
	esac
done
"#;

#[test]
fn state_check_wants_the_labelled_filesystem_and_every_bind_from_it() {
    let mut h = Harness::new();
    let findmnt = h.path("findmnt");
    std::fs::write(&findmnt, FAKE_FINDMNT).unwrap();
    std::fs::set_permissions(&findmnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    h.set("IMAGEBUILD_FINDMNT", findmnt.to_str().unwrap());
    let state = Check {
        kind: CheckKind::State {
            label: "srv-data".into(),
            mount: "/srv".into(),
            binds: vec!["/var/lib/docker".into(), "/etc/app".into()],
        },
    };
    let check = |h: &mut Harness, mounts: &str| {
        h.set("FAKE_MOUNTS", mounts);
        let run = h.run("prod", std::slice::from_ref(&state));
        (run.healthy, results(&run.report)["state srv-data"].clone())
    };
    let srv = "/srv 259:3 srv-data /\n";
    let binds =
        "/var/lib/docker 259:3 srv-data /var/lib/docker\n/etc/app 259:3 srv-data /etc/app\n";
    assert_eq!(
        check(&mut h, &format!("{srv}{binds}")),
        (true, (true, "/srv from srv-data, 2 binds".into()))
    );
    assert_eq!(
        check(&mut h, binds),
        (false, (false, "/srv is not mounted".into()))
    );
    assert_eq!(
        check(&mut h, &format!("/srv 259:2 root /\n{binds}")),
        (false, (false, "/srv is mounted from label root".into()))
    );
    assert_eq!(
        check(&mut h, "/srv 259:3 - /\n"),
        (false, (false, "/srv is mounted from label none".into()))
    );
    assert_eq!(
        check(
            &mut h,
            &format!("{srv}/var/lib/docker 259:2 root /var/lib/docker\n")
        ),
        (
            false,
            (
                false,
                "/var/lib/docker: /var/lib/docker of 259:2, /etc/app: not a mount".into()
            )
        )
    );
}
