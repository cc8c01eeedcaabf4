//! Reading a compose file: its services' images and healthchecks, and the files it refers to
//! (env files, configs, secrets, relative bind-mount sources), which are baked with it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

/// What a stack needs from its compose file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    /// Sorted by name.
    pub services: Vec<Service>,
    /// Files and directories the compose file refers to, relative to its directory,
    /// normalised, sorted and without duplicates.
    pub files: Vec<FileRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub image: String,
    /// 1-based line of `image:` in the compose file.
    pub line: usize,
    /// The compose file gives the service a healthcheck (not disabled).
    pub healthcheck: bool,
}

/// A path the compose file refers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileRef {
    /// Relative to the compose file's directory, normalised (`env/app.env`).
    pub path: String,
    /// What refers to it (`env_file of service web`), for errors.
    pub what: String,
    /// A missing file is an error; `env_file` entries with `required: false` are not.
    pub required: bool,
}

/// A problem with the compose file; `line` is 1-based when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeError {
    pub line: Option<usize>,
    pub message: String,
    pub hint: String,
}

#[derive(Deserialize)]
struct RawCompose {
    services: Option<BTreeMap<String, RawService>>,
    configs: Option<BTreeMap<String, Option<RawFileDef>>>,
    secrets: Option<BTreeMap<String, Option<RawFileDef>>>,
    include: Option<Spanned<IgnoredAny>>,
}

#[derive(Deserialize)]
struct RawService {
    image: Option<Spanned<String>>,
    build: Option<Spanned<IgnoredAny>>,
    env_file: Option<EnvFiles>,
    volumes: Option<Vec<RawVolume>>,
    healthcheck: Option<RawHealth>,
    extends: Option<RawExtends>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EnvFiles {
    One(String),
    Many(Vec<EnvFileItem>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EnvFileItem {
    Path(String),
    Long {
        path: String,
        required: Option<bool>,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawVolume {
    Short(String),
    Long {
        #[serde(rename = "type")]
        kind: Option<String>,
        source: Option<String>,
    },
}

#[derive(Deserialize)]
struct RawHealth {
    test: Option<StrOrList>,
    disable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrList {
    Str(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawExtends {
    Long { file: Option<String> },
    Service(IgnoredAny),
}

#[derive(Deserialize)]
struct RawFileDef {
    file: Option<String>,
}

/// Parses a compose file's text.
pub fn parse(text: &str) -> Result<Compose, ComposeError> {
    let raw: RawCompose = serde_saphyr::from_str(text).map_err(|e| ComposeError {
        line: e.location().map(|l| usize::try_from(l.line()).unwrap_or(1)),
        message: first_line(&e.without_snippet().to_string()),
        hint: "fix the YAML at that line".into(),
    })?;
    if let Some(inc) = &raw.include {
        return Err(ComposeError {
            line: Some(line_of(&inc.referenced)),
            message: "`include:` is not supported".into(),
            hint: "merge the included files into this compose file".into(),
        });
    }
    let mut services = Vec::new();
    let mut files = Vec::new();
    for (name, s) in raw.services.unwrap_or_default() {
        services.push(service(&name, &s)?);
        service_files(&name, &s, &mut files)?;
    }
    if services.is_empty() {
        return Err(ComposeError {
            line: None,
            message: "the compose file has no services".into(),
            hint: "add a `services:` section".into(),
        });
    }
    for (kind, defs) in [("config", raw.configs), ("secret", raw.secrets)] {
        for (name, def) in defs.unwrap_or_default() {
            if let Some(file) = def.and_then(|d| d.file) {
                push_file(&mut files, &file, format!("file of {kind} {name}"), true)?;
            }
        }
    }
    files.sort();
    files.dedup_by(|a, b| a.path == b.path);
    Ok(Compose { services, files })
}

fn service(name: &str, s: &RawService) -> Result<Service, ComposeError> {
    if let Some(b) = &s.build {
        return Err(ComposeError {
            line: Some(line_of(&b.referenced)),
            message: format!("service `{name}` has `build:`; images must be pinned, not built"),
            hint: "build and push the image, then write `image: NAME:TAG@sha256:...` instead of `build:`".into(),
        });
    }
    if let Some(RawExtends::Long { file: Some(_) }) = &s.extends {
        return Err(ComposeError {
            line: None,
            message: format!(
                "service `{name}` extends a service of another file; that is not supported"
            ),
            hint: "copy the service definition into this compose file".into(),
        });
    }
    let Some(image) = &s.image else {
        return Err(ComposeError {
            line: None,
            message: format!("service `{name}` has no `image:`"),
            hint: "give every service an `image: NAME:TAG@sha256:...`".into(),
        });
    };
    let healthcheck = s.healthcheck.as_ref().is_some_and(|h| {
        let none = match &h.test {
            Some(StrOrList::List(l)) => l.first().is_some_and(|t| t == "NONE"),
            Some(StrOrList::Str(t)) => t.is_empty(),
            None => false,
        };
        h.disable != Some(true) && !none
    });
    Ok(Service {
        name: name.to_string(),
        image: image.value.clone(),
        line: line_of(&image.referenced),
        healthcheck,
    })
}

fn service_files(name: &str, s: &RawService, files: &mut Vec<FileRef>) -> Result<(), ComposeError> {
    let what = format!("env_file of service {name}");
    match &s.env_file {
        Some(EnvFiles::One(p)) => push_file(files, p, what, true)?,
        Some(EnvFiles::Many(items)) => {
            for item in items {
                match item {
                    EnvFileItem::Path(p) => push_file(files, p, what.clone(), true)?,
                    EnvFileItem::Long { path, required } => {
                        push_file(files, path, what.clone(), required.unwrap_or(true))?;
                    }
                }
            }
        }
        None => {}
    }
    for v in s.volumes.iter().flatten() {
        let source = match v {
            RawVolume::Short(text) => text.split_once(':').map(|(src, _)| src),
            RawVolume::Long { kind, source } => {
                if kind.as_deref() == Some("bind") {
                    source.as_deref()
                } else {
                    None
                }
            }
        };
        if let Some(src) = source.filter(|p| p.starts_with('.')) {
            push_file(files, src, format!("bind mount of service {name}"), true)?;
        }
    }
    Ok(())
}

/// Records a relative reference; absolute paths point into the machine and are left alone.
fn push_file(
    files: &mut Vec<FileRef>,
    path: &str,
    what: String,
    required: bool,
) -> Result<(), ComposeError> {
    if path.starts_with('/') || path.starts_with('~') {
        return Ok(());
    }
    let Some(norm) = normalise(path) else {
        return Err(ComposeError {
            line: None,
            message: format!("{what}: `{path}` is outside the compose file's directory"),
            hint: "keep the files a stack uses in the compose file's directory or below it".into(),
        });
    };
    if norm.is_empty() {
        return Err(ComposeError {
            line: None,
            message: format!("{what}: `{path}` is the compose file's directory itself"),
            hint: "mount a subdirectory instead".into(),
        });
    }
    files.push(FileRef {
        path: norm,
        what,
        required,
    });
    Ok(())
}

/// `./a/../b/c` -> `b/c`; None when the path leaves its starting directory.
pub fn normalise(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn line_of(l: &serde_saphyr::Location) -> usize {
    usize::try_from(l.line()).unwrap_or(1).max(1)
}

/// The first line of a parser message, without the `at line L, column C` the caller
/// already puts in front.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    line.rfind(" at line ")
        .map_or(line, |i| &line[..i])
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
services:
  web:
    image: registry.example/app:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    env_file: app.env
    volumes:
      - ./html:/www:ro
      - data:/data
      - /var/run/docker.sock:/var/run/docker.sock
      - type: bind
        source: ./conf/nginx.conf
        target: /etc/nginx.conf
    healthcheck:
      test: ["CMD", "true"]
  worker:
    image: registry.example/worker:2
    env_file:
      - ./env/common.env
      - path: ./env/local.env
        required: false
    healthcheck:
      disable: true
configs:
  site:
    file: ./conf/site.conf
  external_one:
    external: true
secrets:
  token:
    file: secrets/../secrets/token.txt
volumes:
  data: {}
"#;

    #[test]
    fn collects_images_healthchecks_and_referenced_files() {
        let c = parse(GOOD).unwrap();
        let names: Vec<(&str, usize, bool)> = c
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.line, s.healthcheck))
            .collect();
        assert_eq!(names, [("web", 4, true), ("worker", 16, false)]);
        assert!(c.services[1].image.ends_with("worker:2"));
        let files: Vec<(&str, bool)> = c
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.required))
            .collect();
        assert_eq!(
            files,
            [
                ("app.env", true),
                ("conf/nginx.conf", true),
                ("conf/site.conf", true),
                ("env/common.env", true),
                ("env/local.env", false),
                ("html", true),
                ("secrets/token.txt", true),
            ]
        );
    }

    #[test]
    fn a_parse_error_has_its_line() {
        let e = parse("services:\n  web:\n    image: [unclosed\n").unwrap_err();
        assert!(e.line.is_some_and(|l| l >= 3), "{e:?}");
        assert!(!e.message.is_empty());
        let e = parse("services:\n  web:\n    image: a\n  bad indent\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e:?}");
    }

    #[test]
    fn build_is_refused_with_its_line() {
        let e = parse("services:\n  web:\n    image: a\n    build: ./src\n").unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("`build:`"), "{e:?}");
        assert!(e.hint.contains("sha256"), "{e:?}");
    }

    #[test]
    fn escaping_references_and_missing_images_are_refused() {
        let e = parse("services:\n  web:\n    image: a\n    env_file: ../other.env\n").unwrap_err();
        assert!(
            e.message.contains("outside the compose file's directory"),
            "{e:?}"
        );
        let e = parse("services:\n  web:\n    env_file: x.env\n").unwrap_err();
        assert!(e.message.contains("has no `image:`"), "{e:?}");
        let e = parse("include:\n  - other.yaml\nservices:\n  web:\n    image: a\n").unwrap_err();
        assert_eq!(e.line, Some(2), "the line of the value");
    }

    #[test]
    fn normalise_stays_inside() {
        assert_eq!(normalise("./a/../b//c").as_deref(), Some("b/c"));
        assert_eq!(normalise("a/../../b"), None);
    }
}
