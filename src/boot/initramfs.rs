//! A small busybox initramfs: a deterministic cpio (newc) archive, zstd-compressed.
//!
//! Layout: /init (the script in `init.sh`), /bin/busybox and the applet links /init uses,
//! /etc/imagebuild-initramfs.conf (KVER, ROOT_TIMEOUT), /etc/imagebuild-initramfs.modules (load
//! order), the modules uncompressed under /lib/modules/KVER/ (busybox insmod cannot
//! decompress), /dev/console and /dev/null nodes (the kernel opens /dev/console for /init
//! before anything is mounted), and empty /proc /sys /run /newroot.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result, ensure};

use super::modules::Closure;

/// What goes into the initramfs.
pub struct InitramfsSpec<'a> {
    /// A static busybox for the target architecture (busybox-static's /usr/bin/busybox).
    pub busybox: &'a [u8],
    pub kver: &'a str,
    pub modules: &'a Closure,
    /// How long /init waits for the root device (the kernel's `rootdelay=` overrides it).
    pub root_timeout_secs: u32,
    /// mtime of every entry (SOURCE_DATE_EPOCH).
    pub epoch: i64,
}

/// The /init script.
pub const INIT_SCRIPT: &str = include_str!("init.sh");

/// Read by /init: `KVER=` and `ROOT_TIMEOUT=`.
const CONF_PATH: &str = "etc/imagebuild-initramfs.conf";

/// Read by /init: module paths relative to /lib/modules/KVER/, one per line, in load order.
const MODULES_PATH: &str = "etc/imagebuild-initramfs.modules";

/// The busybox applets /init calls, linked in /bin.
const APPLETS: [&str; 22] = [
    "[",
    "cat",
    "chmod",
    "cttyhack",
    "echo",
    "findfs",
    "grep",
    "insmod",
    "ls",
    "mkdir",
    "mount",
    "od",
    "poweroff",
    "reboot",
    "sed",
    "setsid",
    "sh",
    "sleep",
    "switch_root",
    "test",
    "tr",
    "umount",
];

/// zstd level: both cloud kernels have CONFIG_RD_ZSTD=y (and CONFIG_RD_XZ=y). Measured on
/// the trixie amd64 initramfs (5.3 MB cpio): level 9 gives 1.71 MB in 0.3 s, level 19
/// 1.53 MB in 4.4 s, xz -9 1.42 MB in 4.6 s; the 0.2 MB are ~1% of a UKI.
const ZSTD_LEVEL: i32 = 9;

/// One entry of the archive.
#[derive(Debug, PartialEq, Eq)]
enum Node<'a> {
    Dir,
    File { mode: u32, data: FileData<'a> },
    Symlink(&'static str),
    CharDev { mode: u32, major: u32, minor: u32 },
}

#[derive(Debug, PartialEq, Eq)]
enum FileData<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl FileData<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            FileData::Borrowed(b) => b,
            FileData::Owned(v) => v,
        }
    }
}

/// Archive paths (no leading '/') to nodes; the map keeps them sorted.
type Tree<'a> = BTreeMap<String, Node<'a>>;

/// A deterministic cpio newc archive (sorted entries, inode numbers in that order,
/// mtime = epoch, uid/gid 0), zstd-compressed.
pub fn build_initramfs(spec: &InitramfsSpec) -> Result<Vec<u8>> {
    let tree = initramfs_tree(spec)?;
    let mtime = u32::try_from(spec.epoch)
        .with_context(|| format!("epoch {} does not fit a cpio mtime", spec.epoch))?;
    let archive = write_cpio(&tree, mtime).context("writing the initramfs cpio")?;
    zstd::bulk::compress(&archive, ZSTD_LEVEL).context("compressing the initramfs")
}

fn initramfs_tree<'a>(spec: &InitramfsSpec<'a>) -> Result<Tree<'a>> {
    check_name(spec.kver, false).context("checking the kernel version")?;
    ensure!(!spec.busybox.is_empty(), "busybox is empty");
    let mut tree = Tree::new();
    add_skeleton(&mut tree);
    add_busybox(&mut tree, spec.busybox);
    let conf = format!(
        "KVER={}\nROOT_TIMEOUT={}\n",
        spec.kver, spec.root_timeout_secs
    );
    add_file(&mut tree, CONF_PATH, 0o644, FileData::Owned(conf.into()));
    add_modules(&mut tree, spec)?;
    Ok(tree)
}

/// /init, the mount points and the device nodes the kernel needs before devtmpfs.
fn add_skeleton(tree: &mut Tree) {
    for dir in ["dev", "etc", "newroot", "proc", "run", "sys"] {
        add_node(tree, dir, Node::Dir);
    }
    add_file(
        tree,
        "init",
        0o755,
        FileData::Borrowed(INIT_SCRIPT.as_bytes()),
    );
    add_char_dev(tree, "dev/console", 0o600, (5, 1));
    add_char_dev(tree, "dev/null", 0o666, (1, 3));
}

fn add_busybox<'a>(tree: &mut Tree<'a>, busybox: &'a [u8]) {
    add_file(tree, "bin/busybox", 0o755, FileData::Borrowed(busybox));
    for applet in APPLETS {
        add_node(tree, &format!("bin/{applet}"), Node::Symlink("busybox"));
    }
}

fn add_modules<'a>(tree: &mut Tree<'a>, spec: &InitramfsSpec<'a>) -> Result<()> {
    let mut order = String::new();
    for module in &spec.modules.modules {
        check_name(&module.path, true)
            .with_context(|| format!("checking the path of module {}", module.name))?;
        let path = format!("lib/modules/{}/{}", spec.kver, module.path);
        add_file(tree, &path, 0o644, FileData::Borrowed(&module.contents));
        order.push_str(&module.path);
        order.push('\n');
    }
    add_file(tree, MODULES_PATH, 0o644, FileData::Owned(order.into()));
    Ok(())
}

/// Names end up in a shell config file and a line-per-module list: keep them plain.
fn check_name(name: &str, allow_slash: bool) -> Result<()> {
    let plain =
        |c: char| c.is_ascii_alphanumeric() || "._+~-".contains(c) || (allow_slash && c == '/');
    ensure!(
        !name.is_empty()
            && name.chars().all(plain)
            && !name.split('/').any(|c| c.is_empty() || c == ".."),
        "{name:?} has characters the initramfs cannot use"
    );
    Ok(())
}

fn add_file<'a>(tree: &mut Tree<'a>, path: &str, mode: u32, data: FileData<'a>) {
    add_node(tree, path, Node::File { mode, data });
}

fn add_char_dev(tree: &mut Tree, path: &str, mode: u32, (major, minor): (u32, u32)) {
    add_node(tree, path, Node::CharDev { mode, major, minor });
}

/// Adds a node and every missing parent directory.
fn add_node<'a>(tree: &mut Tree<'a>, path: &str, node: Node<'a>) {
    for (slash, _) in path.match_indices('/') {
        tree.entry(path[..slash].to_string()).or_insert(Node::Dir);
    }
    tree.insert(path.to_string(), node);
}

fn write_cpio(tree: &Tree, mtime: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (i, (path, node)) in tree.iter().enumerate() {
        // OK to unwrap: an initramfs has far fewer than 2^32 entries.
        let ino = u32::try_from(i + 1).unwrap();
        write_entry(&mut out, path, node, ino, mtime).with_context(|| format!("adding {path}"))?;
    }
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

fn write_entry(out: &mut Vec<u8>, path: &str, node: &Node, ino: u32, mtime: u32) -> Result<()> {
    let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match node {
        Node::Dir => (0o040_755, 2, &[], (0, 0)),
        Node::File { mode, data } => (0o100_000 | mode, 1, data.bytes(), (0, 0)),
        Node::Symlink(target) => (0o120_777, 1, target.as_bytes(), (0, 0)),
        Node::CharDev { mode, major, minor } => (0o020_000 | mode, 1, &[], (*major, *minor)),
    };
    let size = u32::try_from(data.len()).context("file larger than 4 GiB")?;
    let mut writer = cpio::newc::Builder::new(path)
        .ino(ino)
        .mode(mode)
        .uid(0)
        .gid(0)
        .nlink(nlink)
        .mtime(mtime)
        .rdev_major(rdev.0)
        .rdev_minor(rdev.1)
        .write(out, size);
    writer.write_all(data)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::modules::{Module, ModuleName};
    use std::collections::BTreeSet;
    use std::io::Read;

    fn closure() -> Closure {
        Closure {
            modules: vec![
                Module {
                    name: ModuleName::new("scsi_mod"),
                    path: "kernel/drivers/scsi/scsi_mod.ko".into(),
                    contents: b"\x7fELF scsi".to_vec(),
                },
                Module {
                    name: ModuleName::new("virtio_blk"),
                    path: "kernel/drivers/block/virtio_blk.ko".into(),
                    contents: b"\x7fELF vblk".to_vec(),
                },
            ],
            builtin: vec!["ext4".into()],
            unknown: vec![],
        }
    }

    fn spec<'a>(closure: &'a Closure, kver: &'a str) -> InitramfsSpec<'a> {
        InitramfsSpec {
            busybox: b"\x7fELF busybox",
            kver,
            modules: closure,
            root_timeout_secs: 7,
            epoch: 1_700_000_000,
        }
    }

    struct Entry {
        name: String,
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    fn read_back(initramfs: &[u8]) -> Vec<Entry> {
        let mut cpio = zstd::stream::decode_all(initramfs).unwrap();
        let mut entries = Vec::new();
        loop {
            let mut reader = cpio::newc::Reader::new(&cpio[..]).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let e = reader.entry();
            let mut entry = Entry {
                name: e.name().to_string(),
                ino: e.ino(),
                mode: e.mode(),
                uid: e.uid(),
                gid: e.gid(),
                mtime: e.mtime(),
                rdev: (e.rdev_major(), e.rdev_minor()),
                data: Vec::new(),
            };
            reader.read_to_end(&mut entry.data).unwrap();
            let rest = reader.finish().unwrap();
            entries.push(entry);
            cpio = rest.to_vec();
        }
        entries
    }

    #[test]
    fn deterministic() {
        let c = closure();
        let a = build_initramfs(&spec(&c, "6.12.1-cloud-amd64")).unwrap();
        let b = build_initramfs(&spec(&c, "6.12.1-cloud-amd64")).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn round_trip() {
        let c = closure();
        let entries = read_back(&build_initramfs(&spec(&c, "6.12.1-cloud-amd64")).unwrap());
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.ino as usize, i + 1, "{}", e.name);
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 1_700_000_000), "{}", e.name);
        }
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("init").mode, 0o100_755);
        assert_eq!(get("init").data, INIT_SCRIPT.as_bytes());
        assert_eq!(get("bin/sh").mode, 0o120_777);
        assert_eq!(get("bin/sh").data, b"busybox");
        assert_eq!(get("dev/console").mode, 0o020_600);
        assert_eq!(get("dev/console").rdev, (5, 1));
        for dir in [
            "proc",
            "sys",
            "run",
            "newroot",
            "lib/modules/6.12.1-cloud-amd64/kernel",
        ] {
            assert_eq!(get(dir).mode, 0o040_755, "{dir}");
        }
        assert_eq!(
            get("lib/modules/6.12.1-cloud-amd64/kernel/drivers/block/virtio_blk.ko").data,
            b"\x7fELF vblk"
        );
        assert_eq!(
            get("etc/imagebuild-initramfs.modules").data,
            b"kernel/drivers/scsi/scsi_mod.ko\nkernel/drivers/block/virtio_blk.ko\n"
        );
        assert_eq!(
            get("etc/imagebuild-initramfs.conf").data,
            b"KVER=6.12.1-cloud-amd64\nROOT_TIMEOUT=7\n"
        );
    }

    /// The command words of a (simple) shell script: the first word of every pipeline
    /// element, `$(...)` and `&&`/`||` list member, after keywords and case patterns.
    fn command_words(script: &str) -> BTreeSet<String> {
        const PREFIXES: [&str; 9] = [
            "if", "then", "else", "elif", "do", "while", "until", "!", "exec",
        ];
        const NOT_COMMANDS: [&str; 7] = ["esac", "fi", "done", "{", "}", ";;", "in"];
        let mut words = BTreeSet::new();
        for line in script.lines().map(str::trim) {
            let pattern_line = line.ends_with(')') && !line.contains('(');
            if line.starts_with('#') || line.contains("() {") || pattern_line {
                continue;
            }
            let line = line.replace(['"', '\''], "").replace(">&", ">");
            // A case pattern ("shell)", "UUID=* | LABEL=*)") starts a line.
            let line = match line.split_once(") ") {
                Some((pattern, rest))
                    if !pattern.contains(['$', ' ']) || pattern.contains(" | ") =>
                {
                    rest
                }
                _ => &line,
            };
            for segment in line.split("$(").flat_map(|s| s.split(['|', ';', '&'])) {
                let mut tokens = segment.split_whitespace();
                let Some(word) = tokens.find(|t| !PREFIXES.contains(t)) else {
                    continue;
                };
                if ["for", "case"].contains(&word) {
                    continue;
                }
                if word.contains('=')
                    || word.starts_with(['(', '<', '>'])
                    || NOT_COMMANDS.contains(&word)
                {
                    continue;
                }
                words.insert(word.trim_end_matches(')').to_string());
            }
        }
        words
    }

    #[test]
    fn every_script_command_is_linked() {
        let functions: BTreeSet<String> = INIT_SCRIPT
            .lines()
            .filter_map(|l| l.split_once("() {"))
            .map(|(name, _)| name.to_string())
            .collect();
        let builtins = ["export", "set", "read", "return", "exit", "continue", "."];
        let words = command_words(INIT_SCRIPT);
        for expected in [
            "insmod",
            "switch_root",
            "findfs",
            "ls",
            "od",
            "tr",
            "grep",
            "sed",
            "poweroff",
        ] {
            assert!(words.contains(expected), "{expected} not seen in {words:?}");
        }
        for word in &words {
            if functions.contains(word) || builtins.contains(&word.as_str()) {
                continue;
            }
            assert!(APPLETS.contains(&word.as_str()), "{word:?} is not linked");
        }
        // The shebang and `setsid cttyhack sh` name these.
        assert!(APPLETS.contains(&"sh") && APPLETS.contains(&"cttyhack"));
    }

    #[test]
    fn init_script_reads_the_generated_files() {
        assert!(INIT_SCRIPT.contains(&format!(". /{CONF_PATH}\n")));
        assert!(INIT_SCRIPT.contains(&format!("done </{MODULES_PATH}\n")));
    }

    #[test]
    fn init_script_parses() {
        let status = std::process::Command::new("sh")
            .args(["-n", "-c", INIT_SCRIPT])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Runs the init script's `load_modules` with insmod and find_root replaced: the root
    /// shows up once `appears_after` is loaded (or at once when None). Returns the modules
    /// loaded and how many times the root was looked for.
    fn load_modules_with(list: &[&str], appears_after: Option<&str>) -> (Vec<String>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let modules = dir.path().join("modules");
        std::fs::write(&modules, list.join("\n") + "\n").unwrap();
        if appears_after.is_none() {
            std::fs::write(dir.path().join("root"), "").unwrap();
        }
        let functions = INIT_SCRIPT
            .split(&format!(". /{CONF_PATH}\n"))
            .next()
            .unwrap()
            .replace(&format!("/{MODULES_PATH}"), &modules.display().to_string());
        let driver = format!(
            "insmod() {{ echo \"${{1#/lib/modules/$KVER/}}\" >>{d}/loaded; \
             [ \"$1\" = /lib/modules/$KVER/{after} ] && : >{d}/root; return 0; }}\n\
             find_root() {{ echo >>{d}/looked; [ -e {d}/root ] && echo /dev/vda2; }}\n\
             KVER=6.12.1\nload_modules\n",
            after = appears_after.unwrap_or("none"),
        );
        let status = std::process::Command::new("sh")
            .args(["-e", "-c", &(functions + &driver)])
            .status()
            .unwrap();
        assert!(status.success());
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        let loaded = read("loaded").lines().map(str::to_owned).collect();
        (loaded, read("looked").lines().count())
    }

    #[test]
    fn disk_drivers_load_only_until_the_root_is_found() {
        let list = [
            "kernel/lib/crc16.ko",
            "kernel/fs/ext4/ext4.ko",
            "kernel/drivers/block/virtio_blk.ko",
            "kernel/drivers/scsi/scsi_mod.ko",
            "kernel/drivers/scsi/virtio_scsi.ko",
            "kernel/drivers/block/xen-blkfront.ko",
        ];
        // The disk driver is built in: only the filesystem is loaded, and the GPT scan
        // (a handful of processes) runs once, not once per listed driver.
        let (loaded, looked) = load_modules_with(&list, None);
        assert_eq!(loaded, ["kernel/lib/crc16.ko", "kernel/fs/ext4/ext4.ko"]);
        assert_eq!(looked, 1);
        // The root appears once virtio_blk is loaded: no SCSI or Xen driver follows.
        let (loaded, looked) = load_modules_with(&list, Some("kernel/drivers/block/virtio_blk.ko"));
        assert_eq!(loaded, list[..3]);
        assert_eq!(looked, 2);
        // It never appears: every driver is tried.
        let (loaded, _) = load_modules_with(&list, Some("none.ko"));
        assert_eq!(loaded, list);
    }

    /// Runs the init script's `import_credentials` on `extra` (the stub's /.extra) into
    /// `extra/../run`; returns what it printed.
    fn import_credentials_in(extra: &std::path::Path) -> String {
        let functions = INIT_SCRIPT
            .split(&format!(". /{CONF_PATH}\n"))
            .next()
            .unwrap();
        let run = extra.parent().unwrap().join("run");
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("{functions}import_credentials \"$1\" \"$2\"\n"),
            ])
            .args([
                "sh",
                &extra.display().to_string(),
                &run.display().to_string(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn credentials_from_the_esp_go_to_run_credentials_initrd() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let extra = dir.path().join(".extra");
        let write = |path: &str, data: &str| {
            let p = extra.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        write("credentials/system.hostname.cred", "web-3");
        write("credentials/with space.cred", "x y\n");
        write("credentials/both.cred", "the UKI's own");
        write("credentials/notes.txt", "not a credential");
        write("global_credentials/both.cred", "global");
        write("global_credentials/global.only.cred", "g");
        let printed = import_credentials_in(&extra);
        assert_eq!(
            printed,
            "imagebuild-initramfs: credentials from the ESP: both system.hostname with space global.only\n"
        );
        let run = dir.path().join("run");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&run), 0o700);
        let mut names: Vec<String> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["both", "global.only", "system.hostname", "with space"]
        );
        for (name, value) in [
            ("both", "the UKI's own"),
            ("global.only", "g"),
            ("system.hostname", "web-3"),
            ("with space", "x y\n"),
        ] {
            let p = run.join(name);
            assert_eq!(std::fs::read_to_string(&p).unwrap(), value, "{name}");
            assert_eq!(mode(&p), 0o400, "{name}");
        }
    }

    #[test]
    fn no_credentials_leave_no_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(import_credentials_in(&dir.path().join(".extra")), "");
        assert!(!dir.path().join("run").exists());
    }

    #[test]
    fn odd_names_are_refused() {
        let c = closure();
        assert!(build_initramfs(&spec(&c, "6.12 bad")).is_err());
        let mut c = closure();
        c.modules[0].path = "kernel/../x.ko".into();
        assert!(build_initramfs(&spec(&c, "6.12.1")).is_err());
    }

    #[test]
    fn negative_epoch_is_refused() {
        let c = closure();
        let mut s = spec(&c, "6.12.1");
        s.epoch = -1;
        let err = build_initramfs(&s).unwrap_err();
        assert!(err.to_string().contains("epoch -1"), "{err:#}");
    }
}
