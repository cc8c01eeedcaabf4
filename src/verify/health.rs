//! The in-image health report: the checks a profile asks for, the files that run them on
//! every boot, and the one console line they print.
//!
//! The image gets a bash script, a oneshot unit ordered after `multi-user.target` and the
//! symlink that enables it. On every boot the script waits until no other unit has a job,
//! collects the failed units, runs the checks and prints one line, to the journal and to
//! `/dev/console`:
//!
//! ```text
//! IMAGEBUILD-HEALTH {"image":"prod","version":"2026.11.1","hostname":"prod","pending_jobs":[],"failed_units":[],
//!   "checks":[{"check":"unit ssh.service","ok":true,"detail":"active"}]}
//! ```
//! (one line on the console). [`parse_health_line`] finds it anywhere in a console line, so
//! kernel output or a journald prefix before it does no harm.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Marks the health line on the console; the JSON report follows it.
pub const HEALTH_PREFIX: &str = "IMAGEBUILD-HEALTH ";
/// The script in the image.
pub const SCRIPT_PATH: &str = "/usr/lib/imagebuild/health";
/// The unit in the image.
pub const UNIT_PATH: &str = "/usr/lib/systemd/system/imagebuild-health.service";
/// The symlink that enables the unit.
pub const WANTS_LINK_PATH: &str =
    "/etc/systemd/system/multi-user.target.wants/imagebuild-health.service";

/// Check labels longer than this are cut, so that the console line stays short.
const LABEL_MAX: usize = 64;
/// The image id and version are cut to this length.
const ID_MAX: usize = 128;
/// The part of the script that does not depend on the image.
const SCRIPT_LIBRARY: &str = include_str!("health.sh");

/// One `[[verify.check]]` table of a profile. Exactly one kind key is allowed:
/// `{ unit = "ssh.service" }`, `{ tcp = 22 }`, `{ command = "test -s /etc/hostname" }` or
/// `{ http = "http://localhost:8080/health", status = 200 }` (`status` defaults to 200).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCheck")]
pub struct Check {
    pub kind: CheckKind,
}

/// What a check looks at in the booted image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// `systemctl is-active UNIT` says `active`.
    Unit(String),
    /// Something listens on this TCP port (IPv4 or IPv6).
    Tcp(u16),
    /// `sh -c COMMAND` exits 0 within 60 s.
    Command(String),
    /// `GET` over HTTP/1.0 answers with `status` within 10 s.
    Http { url: HttpUrl, status: u16 },
    /// Every service of compose project `project` has a running container, healthy where
    /// the flag says the compose file defines a healthcheck (from `[[stack]]`, not from
    /// `[[verify.check]]`).
    Stack {
        project: String,
        services: Vec<(String, bool)>,
    },
    /// `mount` is mounted from the filesystem labelled `label`, and each of `binds` is a
    /// mount of `mount`/PATH from that filesystem (from `[[state]]`, not from
    /// `[[verify.check]]`).
    State {
        label: String,
        mount: String,
        binds: Vec<String>,
    },
}

/// A plain `http://host[:port][/path]` URL, split for bash's `/dev/tcp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// The table as written; [`Check`] is built from it and checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    unit: Option<String>,
    tcp: Option<u16>,
    command: Option<String>,
    http: Option<String>,
    status: Option<u16>,
}

impl TryFrom<RawCheck> for Check {
    type Error = String;

    fn try_from(raw: RawCheck) -> Result<Self, Self::Error> {
        if raw.status.is_some() && raw.http.is_none() {
            return Err("`status` belongs to an `http` check".to_owned());
        }
        let status = raw.status.unwrap_or(200);
        let mut found: Vec<(&str, Result<CheckKind, String>)> = Vec::new();
        if let Some(unit) = raw.unit {
            found.push(("unit", checked_word("unit", unit).map(CheckKind::Unit)));
        }
        if let Some(port) = raw.tcp {
            found.push(("tcp", checked_port(port).map(CheckKind::Tcp)));
        }
        if let Some(command) = raw.command {
            found.push(("command", checked_command(command).map(CheckKind::Command)));
        }
        if let Some(url) = raw.http {
            found.push(("http", http_kind(&url, status)));
        }
        match <[_; 1]>::try_from(found) {
            Ok([(_, kind)]) => kind.map(|kind| Check { kind }),
            Err(found) => Err(one_kind_error(&found)),
        }
    }
}

fn one_kind_error(found: &[(&str, Result<CheckKind, String>)]) -> String {
    let keys: Vec<&str> = found.iter().map(|(key, _)| *key).collect();
    let keys = if keys.is_empty() {
        "none".to_owned()
    } else {
        keys.join(", ")
    };
    format!("a verify check needs exactly one of `unit`, `tcp`, `command`, `http`; found: {keys}")
}

fn http_kind(url: &str, status: u16) -> Result<CheckKind, String> {
    Ok(CheckKind::Http {
        url: HttpUrl::parse(url)?,
        status: checked_status(status)?,
    })
}

fn checked_word(key: &str, value: String) -> Result<String, String> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{key}` must be one word without control characters: {value:?}"
        ));
    }
    Ok(value)
}

fn checked_port(port: u16) -> Result<u16, String> {
    if port == 0 {
        return Err("`tcp` must be a port from 1 to 65535".to_owned());
    }
    Ok(port)
}

fn checked_command(command: String) -> Result<String, String> {
    if command.trim().is_empty() || command.contains('\0') {
        return Err(format!(
            "`command` must be a non-empty shell command: {command:?}"
        ));
    }
    Ok(command)
}

fn checked_status(status: u16) -> Result<u16, String> {
    if !(100..=599).contains(&status) {
        return Err(format!(
            "`status` must be an HTTP status from 100 to 599, not {status}"
        ));
    }
    Ok(status)
}

impl HttpUrl {
    /// Parses `http://host[:port][/path]`; `https` is refused (the image has no TLS client).
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        if url.starts_with("https://") {
            return Err(format!(
                "{url}: https is not supported (the check has no TLS client); check the plain http port"
            ));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url}: an http check needs an http:// URL"))?;
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{url}: the URL must not contain spaces or control characters"
            ));
        }
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let (host, port) =
            split_host_port(authority).ok_or_else(|| format!("{url}: bad host or port"))?;
        Ok(HttpUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to 80.
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(text) => text.parse().ok().filter(|&p| p != 0)?,
        None => 80,
    };
    (!host.is_empty() && !host.contains('@')).then_some((host, port))
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "http://{host}:{}{}", self.port, self.path)
    }
}

impl Check {
    /// The name the report gives this check, e.g. `unit ssh.service` or `tcp 22`.
    pub fn label(&self) -> String {
        match &self.kind {
            CheckKind::Unit(unit) => format!("unit {unit}"),
            CheckKind::Tcp(port) => format!("tcp {port}"),
            CheckKind::Command(command) => format!("command {command}"),
            CheckKind::Http { url, status } => format!("http {url} {status}"),
            CheckKind::Stack { project, .. } => format!("stack {project}"),
            CheckKind::State { label, .. } => format!("state {label}"),
        }
    }

    /// The script line that runs this check.
    fn script_line(&self) -> String {
        let label = sh_quote(&json_string(&cut(&self.label(), LABEL_MAX)));
        match &self.kind {
            CheckKind::Unit(unit) => format!("check_unit {label} {}", sh_quote(unit)),
            CheckKind::Tcp(port) => format!("check_tcp {label} {port}"),
            CheckKind::Command(command) => format!("check_command {label} {}", sh_quote(command)),
            CheckKind::Http { url, status } => format!(
                "check_http {label} {} {} {} {status}",
                sh_quote(&url.host),
                url.port,
                sh_quote(&url.path)
            ),
            CheckKind::Stack { project, services } => {
                let specs: Vec<String> = services
                    .iter()
                    .map(|(name, health)| {
                        sh_quote(&format!(
                            "{name}:{}",
                            if *health { "healthy" } else { "running" }
                        ))
                    })
                    .collect();
                format!(
                    "check_stack {label} {} {}",
                    sh_quote(project),
                    specs.join(" ")
                )
            }
            CheckKind::State {
                label: fs_label,
                mount,
                binds,
            } => {
                let args: Vec<String> = [fs_label, mount]
                    .into_iter()
                    .chain(binds)
                    .map(|a| sh_quote(a))
                    .collect();
                format!("check_state {label} {}", args.join(" "))
            }
        }
    }
}

/// A file to add to the image. Paths are absolute inside the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeneratedFile {
    /// A regular file owned by root.
    File {
        path: String,
        mode: u32,
        contents: Vec<u8>,
    },
    /// A symbolic link pointing at `target`.
    Symlink { path: String, target: String },
}

impl GeneratedFile {
    pub fn path(&self) -> &str {
        match self {
            GeneratedFile::File { path, .. } | GeneratedFile::Symlink { path, .. } => path,
        }
    }
}

/// The files that make the image report its health on every boot: the script
/// ([`SCRIPT_PATH`], 0755), the unit ([`UNIT_PATH`], 0644) and the symlink that enables it
/// ([`WANTS_LINK_PATH`] -> [`UNIT_PATH`]). The same inputs give the same bytes.
pub fn image_files(image_id: &str, version: &str, checks: &[Check]) -> Vec<GeneratedFile> {
    vec![
        GeneratedFile::File {
            path: SCRIPT_PATH.to_owned(),
            mode: 0o755,
            contents: script(image_id, version, checks).into_bytes(),
        },
        GeneratedFile::File {
            path: UNIT_PATH.to_owned(),
            mode: 0o644,
            contents: unit().into_bytes(),
        },
        GeneratedFile::Symlink {
            path: WANTS_LINK_PATH.to_owned(),
            target: UNIT_PATH.to_owned(),
        },
    ]
}

/// The health script: the fixed library, then this image's values and checks.
fn script(image_id: &str, version: &str, checks: &[Check]) -> String {
    let image = sh_quote(&json_string(&cut(image_id, ID_MAX)));
    let version = sh_quote(&json_string(&cut(version, ID_MAX)));
    let calls: String = checks
        .iter()
        .map(|check| ["\t", &check.script_line(), "\n"].concat())
        .collect();
    format!(
        "{SCRIPT_LIBRARY}\n# This image.\nIMAGE={image}\nVERSION={version}\nrun_checks() {{\n{calls}\t:\n}}\n\nmain\n"
    )
}

/// The unit. Nothing waits for it (it is ordered after `multi-user.target`), so it does not
/// delay the boot; the script bounds its own waiting.
fn unit() -> String {
    format!(
        "\
# Generated by imagebuild: prints this boot's health report on the console.
[Unit]
Description=imagebuild boot health report
After=multi-user.target

[Service]
Type=oneshot
ExecStart={SCRIPT_PATH}
StandardOutput=journal
StandardError=journal
SyslogIdentifier=imagebuild-health
TimeoutStartSec=10min

[Install]
WantedBy=multi-user.target
"
    )
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    // OK to unwrap: serialising a str cannot fail.
    serde_json::to_string(text).expect("a str serialises")
}

/// `text` quoted for a POSIX shell script; NUL bytes (which no shell string holds) are dropped.
fn sh_quote(text: &str) -> String {
    let text = text.replace('\0', "");
    // OK to unwrap: a NUL byte is the only input try_quote refuses, and they are gone.
    shlex::try_quote(&text).expect("no NUL bytes").into_owned()
}

/// `text` cut to at most `max` bytes at a character boundary, marked with `...` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The report printed by the health script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub image: String,
    pub version: String,
    /// The kernel's hostname when the report was made (the profile's, or the machine's
    /// `system.hostname` credential); None in the lines of images built before it was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Units that still had a job when the script stopped waiting (100 s); normally empty.
    pub pending_jobs: Vec<String>,
    /// Failed units. Lists hold at most 6 names; a last entry `+N more` counts the rest.
    pub failed_units: Vec<String>,
    pub checks: Vec<CheckResult>,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's label, e.g. `unit ssh.service`.
    pub check: String,
    pub ok: bool,
    /// What was seen, e.g. `active`, `status 500`, `exit 1`.
    #[serde(default)]
    pub detail: String,
}

/// Parses one console line; returns None if it is not a health line. The report may follow
/// other text on the line (kernel messages, a journald prefix) and be followed by more.
pub fn parse_health_line(line: &str) -> Option<HealthReport> {
    line.match_indices(HEALTH_PREFIX).find_map(|(at, _)| {
        let json = &line[at + HEALTH_PREFIX.len()..];
        serde_json::Deserializer::from_str(json)
            .into_iter::<HealthReport>()
            .next()?
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Profile {
        check: Vec<Check>,
    }

    fn checks(toml_text: &str) -> Result<Vec<Check>, toml::de::Error> {
        toml::from_str::<Profile>(toml_text).map(|p| p.check)
    }

    #[test]
    fn parses_each_check_kind() {
        let parsed = checks(
            r#"
            [[check]]
            unit = "ssh.service"
            [[check]]
            tcp = 22
            [[check]]
            command = "test -s /etc/hostname"
            [[check]]
            http = "http://localhost:8080/health"
            status = 204
            [[check]]
            http = "http://[::1]/"
            "#,
        )
        .unwrap();
        let kinds: Vec<CheckKind> = parsed.into_iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                CheckKind::Unit("ssh.service".into()),
                CheckKind::Tcp(22),
                CheckKind::Command("test -s /etc/hostname".into()),
                CheckKind::Http {
                    url: HttpUrl {
                        host: "localhost".into(),
                        port: 8080,
                        path: "/health".into()
                    },
                    status: 204
                },
                CheckKind::Http {
                    url: HttpUrl {
                        host: "::1".into(),
                        port: 80,
                        path: "/".into()
                    },
                    status: 200
                },
            ]
        );
    }

    #[test]
    fn refuses_no_kind_several_kinds_and_unknown_keys() {
        let none = checks("[[check]]\n").unwrap_err().to_string();
        assert!(
            none.contains("exactly one of `unit`, `tcp`, `command`, `http`; found: none"),
            "{none}"
        );
        let several = checks("[[check]]\nunit = \"a\"\ntcp = 1\n")
            .unwrap_err()
            .to_string();
        assert!(several.contains("found: unit, tcp"), "{several}");
        let unknown = checks("[[check]]\nunit = \"a\"\nport = 1\n")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `port`"), "{unknown}");
        let status = checks("[[check]]\ntcp = 1\nstatus = 200\n")
            .unwrap_err()
            .to_string();
        assert!(
            status.contains("`status` belongs to an `http` check"),
            "{status}"
        );
    }

    #[test]
    fn refuses_bad_values() {
        for (table, wanted) in [
            ("tcp = 0", "port from 1 to 65535"),
            ("tcp = 70000", "70000"),
            ("unit = \"two words\"", "one word"),
            ("command = \" \"", "non-empty shell command"),
            ("http = \"https://x/\"", "https is not supported"),
            ("http = \"ftp://x/\"", "needs an http:// URL"),
            ("http = \"http://x:0/\"", "bad host or port"),
            ("http = \"http://x/\"\nstatus = 42", "from 100 to 599"),
        ] {
            let err = checks(&format!("[[check]]\n{table}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(wanted), "{table}: {err}");
        }
    }

    #[test]
    fn image_files_are_the_script_the_unit_and_the_link() {
        let files = image_files("prod", "1", &[]);
        let paths: Vec<&str> = files.iter().map(GeneratedFile::path).collect();
        assert_eq!(paths, [SCRIPT_PATH, UNIT_PATH, WANTS_LINK_PATH]);
        assert!(matches!(&files[0], GeneratedFile::File { mode: 0o755, .. }));
        assert!(matches!(&files[1], GeneratedFile::File { mode: 0o644, .. }));
        assert_eq!(
            files[2],
            GeneratedFile::Symlink {
                path: WANTS_LINK_PATH.into(),
                target: UNIT_PATH.into()
            }
        );
        assert_eq!(
            files,
            image_files("prod", "1", &[]),
            "same inputs, same bytes"
        );
    }

    #[test]
    fn unit_is_a_oneshot_after_multi_user() {
        let unit = unit();
        for line in [
            "Type=oneshot",
            "After=multi-user.target",
            "WantedBy=multi-user.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line}");
        }
        assert!(!unit.contains("Wants="), "pulls nothing in");
        assert!(unit.contains(&format!("ExecStart={SCRIPT_PATH}")));
    }

    #[test]
    fn labels_are_cut_at_a_char_boundary() {
        assert_eq!(cut("short", 64), "short");
        let long = "é".repeat(40);
        let cut_text = cut(&long, 64);
        assert!(
            cut_text.len() <= 64 && cut_text.ends_with("..."),
            "{cut_text}"
        );
    }

    #[test]
    fn parses_a_health_line_after_other_output() {
        let line = r#"[   17.2] random: crng init done IMAGEBUILD-HEALTH {"image":"prod","version":"1","pending_jobs":[],"failed_units":["x.service"],"checks":[{"check":"tcp 22","ok":true,"detail":"listening"}]}"#;
        let report = parse_health_line(line).unwrap();
        assert_eq!(report.image, "prod");
        assert_eq!(report.failed_units, ["x.service"]);
        assert_eq!(
            report.checks,
            [CheckResult {
                check: "tcp 22".into(),
                ok: true,
                detail: "listening".into()
            }]
        );
    }

    #[test]
    fn parses_a_report_followed_by_noise_and_skips_a_broken_first_prefix() {
        let line = r#"IMAGEBUILD-HEALTH garbage IMAGEBUILD-HEALTH {"image":"a","version":"1","pending_jobs":[],"failed_units":[],"checks":[]}[ 3.1] late"#;
        assert_eq!(parse_health_line(line).unwrap().image, "a");
    }

    #[test]
    fn the_hostname_is_read_and_optional() {
        let new = r#"IMAGEBUILD-HEALTH {"image":"a","version":"1","hostname":"web-3","pending_jobs":[],"failed_units":[],"checks":[]}"#;
        assert_eq!(
            parse_health_line(new).unwrap().hostname.as_deref(),
            Some("web-3")
        );
        let old = r#"IMAGEBUILD-HEALTH {"image":"a","version":"1","pending_jobs":[],"failed_units":[],"checks":[]}"#;
        assert_eq!(parse_health_line(old).unwrap().hostname, None);
    }

    #[test]
    fn other_lines_are_not_health_lines() {
        assert_eq!(parse_health_line("Welcome to Debian"), None);
        assert_eq!(
            parse_health_line("IMAGEBUILD-HEALTH {\"image\":\"a\",\"vers"),
            None
        );
        assert_eq!(
            parse_health_line("IMAGEBUILD-HEALTH {\"image\":\"a\"}"),
            None
        );
        assert_eq!(parse_health_line("IMAGEBUILD-HEALTH not json"), None);
    }
}
