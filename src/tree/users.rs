//! Users and access, the way `useradd -m` and `adduser` leave an account, without running
//! them: lines appended to /etc/passwd, /etc/group, /etc/shadow and /etc/gshadow (the
//! base's lines kept in order), a 0700 home with /etc/skel copied in, ~/.ssh/authorized_keys,
//! /etc/sudoers.d files. No account has a password: every shadow entry made here, and
//! root's, is `!*` (locked). sshd, when the image has it, accepts keys only.

use std::collections::BTreeSet;

use anyhow::Result;

use super::{Entry, Kind, Tree};
use crate::error::UserError;
use crate::profile::{Located, UserSpec};

/// Debian's range for ordinary users (adduser FIRST_UID / LAST_UID).
const FIRST_UID: u32 = 1000;
const LAST_UID: u32 = 59999;

/// The shadow password field of every account: locked, with no password at all.
pub const LOCKED: &str = "!*";

/// The sshd drop-in. sshd keeps the first value it reads for each keyword, and Debian's
/// sshd_config includes sshd_config.d/*.conf (sorted) on its first line, so this file wins
/// over sshd_config and over any drop-in sorting after "10-".
pub const SSHD_DROPIN: &str = "etc/ssh/sshd_config.d/10-imagebuild.conf";
const SSHD_SETTINGS: &str = "# written by imagebuild: keys only, no root login\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n";
const SSHD_INCLUDE: &str = "Include /etc/ssh/sshd_config.d/*.conf\n";

/// An account as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Adds the profile's users, locks root and makes sshd key-only. Runs after overlays, so
/// groups and the sudo package are looked up in the image as it will ship.
pub fn apply_users(tree: &mut Tree, users: &[UserSpec], epoch: i64) -> Result<Vec<Account>> {
    let mut db = Db::read(tree)?;
    let mut out = Vec::new();
    let reserved: BTreeSet<u32> = users
        .iter()
        .flat_map(|u| [u.uid, u.gid])
        .flatten()
        .collect();
    let has_sudo = has_package(tree, "sudo")?
        || tree
            .resolve("usr/bin/sudo")
            .is_some_and(|p| tree.get(&p).is_some());
    for u in users {
        let account = add_user(tree, &mut db, u, &reserved, epoch)?;
        if u.sudo {
            if !has_sudo {
                return Err(UserError::invalid(format!(
                    "{}: [[user]] {} has sudo, but the image has no sudo package",
                    u.at, u.name
                ))
                .hint("add \"sudo\" to [packages] include")
                .into());
            }
            let rule = format!(
                "# written by imagebuild: no account has a password, so no password is asked\n{} ALL=(ALL:ALL) NOPASSWD: ALL\n",
                u.name
            );
            // sudo skips files in sudoers.d whose names contain '.'; user names have none.
            tree.insert(
                &format!("etc/sudoers.d/imagebuild-{}", u.name),
                Entry::file(rule.into_bytes(), 0o440, epoch),
            );
        }
        out.push(account);
    }
    db.lock_root();
    db.write(tree, epoch);
    if has_sshd(tree)? {
        sshd_keys_only(tree, epoch)?;
    }
    Ok(out)
}

fn add_user(
    tree: &mut Tree,
    db: &mut Db,
    u: &UserSpec,
    reserved: &BTreeSet<u32>,
    epoch: i64,
) -> Result<Account> {
    let fail = |msg: String, hint: &str| -> anyhow::Error {
        UserError::invalid(format!("{}: [[user]] {}: {msg}", u.at, u.name))
            .hint(hint)
            .into()
    };
    if db.passwd.find(&u.name).is_some() {
        return Err(fail(
            "the image already has this user".into(),
            "pick another name (the base or a package made this one)",
        ));
    }
    let uids = db.passwd.ids();
    let gids = db.group.ids();
    let uid = match u.uid {
        Some(id) => {
            if let Some(other) = db.passwd.name_of(id) {
                return Err(fail(
                    format!("uid {id} is already {other}'s"),
                    "pick another uid, or leave uid out to get a free one",
                ));
            }
            id
        }
        None => (FIRST_UID..=LAST_UID)
            .find(|id| !uids.contains(id) && !gids.contains(id) && !reserved.contains(id))
            .ok_or_else(|| fail("no free uid from 1000 to 59999".into(), "set uid"))?,
    };
    let gid = match &u.group {
        Some(g) => db.group.id_of(&g.name).ok_or_else(|| missing_group(u, g))?,
        None => {
            if db.group.find(&u.name).is_some() {
                return Err(fail(
                    format!("the image already has a group {}", u.name),
                    &format!("use it as the primary group with group = \"{}\"", u.name),
                ));
            }
            let gid = match u.gid {
                Some(id) if gids.contains(&id) => {
                    return Err(fail(
                        format!(
                            "gid {id} is already group {}'s",
                            db.group.name_of(id).unwrap_or_default()
                        ),
                        "pick another gid, or use that group with group = \"NAME\"",
                    ));
                }
                Some(id) => id,
                // The user-private group gets the uid when it is free, like sysusers.
                None if !gids.contains(&uid) => uid,
                None => (FIRST_UID..=LAST_UID)
                    .find(|id| !gids.contains(id) && !reserved.contains(id))
                    .ok_or_else(|| fail("no free gid from 1000 to 59999".into(), "set gid"))?,
            };
            db.group.push(format!("{}:x:{gid}:", u.name));
            db.gshadow.push(format!("{}:!::", u.name));
            gid
        }
    };
    for g in &u.groups {
        if !db.group.add_member(&g.name, &u.name) {
            return Err(missing_group(u, g));
        }
        db.gshadow.add_member(&g.name, &u.name);
    }
    let shell = shell(tree, u)?;
    db.passwd
        .push(format!("{}:x:{uid}:{gid}::{}:{shell}", u.name, u.home));
    db.shadow.push(format!(
        "{}:{LOCKED}:{}:0:99999:7:::",
        u.name,
        epoch.div_euclid(86_400)
    ));
    make_home(tree, u, uid, gid, epoch)?;
    Ok(Account {
        name: u.name.clone(),
        uid,
        gid,
    })
}

fn missing_group(u: &UserSpec, g: &Located) -> anyhow::Error {
    UserError::invalid(format!(
        "{}: [[user]] {}: group \"{}\" does not exist in the image",
        g.at, u.name, g.name
    ))
    .hint("groups come with packages (docker: docker.io, sudo: sudo); add the package to [packages] include, or drop the group")
    .into()
}

/// The given shell (which must be in the image), else bash if the image has it, else sh.
fn shell(tree: &Tree, u: &UserSpec) -> Result<String> {
    let exists = |p: &str| {
        tree.resolve(p)
            .is_some_and(|r| matches!(tree.get(&r).map(|e| &e.kind), Some(Kind::File(_))))
    };
    match &u.shell {
        Some(s) if exists(s) => Ok(s.clone()),
        Some(s) => Err(UserError::invalid(format!(
            "{}: [[user]] {}: shell {s} is not in the image",
            u.at, u.name
        ))
        .hint("install the package that has it, or leave shell out (bash, else sh)")
        .into()),
        None if exists("bin/bash") => Ok("/bin/bash".into()),
        None => Ok("/bin/sh".into()),
    }
}

/// The home (0700, like adduser on Debian 13), /etc/skel copied in as `useradd -m` does
/// (files an overlay put there are kept), and ~/.ssh/authorized_keys.
fn make_home(tree: &mut Tree, u: &UserSpec, uid: u32, gid: u32, epoch: i64) -> Result<()> {
    let home = super::clean(&u.home);
    let owned = |mut e: Entry| {
        e.uid = uid;
        e.gid = gid;
        e.mtime = epoch;
        e
    };
    match tree.get(&home).map(|e| &e.kind) {
        None | Some(Kind::Dir) => {}
        Some(_) => {
            return Err(UserError::invalid(format!(
                "{}: [[user]] {}: home {} is not a directory in the image",
                u.at, u.name, u.home
            ))
            .hint("set home to another path, or remove that file from the overlay")
            .into());
        }
    }
    let dir = owned(Entry::dir(0o700, epoch));
    match tree.entries.get_mut(&home) {
        Some(e) => *e = dir,
        None => tree.insert(&home, dir),
    }
    for p in tree.paths_under("etc/skel") {
        let dest = format!("{home}/{}", &p["etc/skel/".len()..]);
        let e = &tree.entries[&p];
        if tree.get(&dest).is_some() || matches!(e.kind, Kind::Hardlink(_)) {
            continue;
        }
        let copy = owned(e.clone());
        tree.insert(&dest, copy);
    }
    if u.ssh_keys.is_empty() {
        return Ok(());
    }
    let keys_path = format!("{home}/.ssh/authorized_keys");
    if tree.get(&keys_path).is_some() {
        return Err(UserError::invalid(format!(
            "{}: [[user]] {}: /{keys_path} comes from an overlay, and ssh-keys is set too",
            u.at, u.name
        ))
        .hint("keep the keys in one place: ssh-keys, or the overlay's file")
        .into());
    }
    let ssh = owned(Entry::dir(0o700, epoch));
    match tree.entries.get_mut(&format!("{home}/.ssh")) {
        Some(e) if matches!(e.kind, Kind::Dir) => *e = ssh,
        _ => tree.insert(&format!("{home}/.ssh"), ssh),
    }
    let text: String = u.ssh_keys.iter().map(|k| format!("{k}\n")).collect();
    tree.insert(
        &keys_path,
        owned(Entry::file(text.into_bytes(), 0o600, epoch)),
    );
    Ok(())
}

fn has_package(tree: &Tree, name: &str) -> Result<bool> {
    Ok(super::installed_packages(tree)?
        .iter()
        .any(|p| p.name == name))
}

fn has_sshd(tree: &Tree) -> Result<bool> {
    Ok(has_package(tree, "openssh-server")? || tree.resolve("usr/sbin/sshd").is_some())
}

/// The drop-in, and sshd_config including the drop-in directory if it does not already.
fn sshd_keys_only(tree: &mut Tree, epoch: i64) -> Result<()> {
    tree.insert(
        SSHD_DROPIN,
        Entry::file(SSHD_SETTINGS.as_bytes().to_vec(), 0o644, epoch),
    );
    let config = tree.read("etc/ssh/sshd_config")?.unwrap_or_default();
    let text = String::from_utf8_lossy(&config);
    let includes = text.lines().any(|l| {
        let l = l.trim_start();
        l.get(..8)
            .is_some_and(|k| k.eq_ignore_ascii_case("include "))
            && l.contains("sshd_config.d/")
    });
    if !includes {
        let path = tree
            .resolve("etc/ssh/sshd_config")
            .unwrap_or_else(|| "etc/ssh/sshd_config".into());
        let mut e = tree
            .get(&path)
            .cloned()
            .unwrap_or_else(|| Entry::file(Vec::new(), 0o644, epoch));
        e.kind = Kind::File(super::Content::Bytes(
            format!("{SSHD_INCLUDE}{text}").into_bytes().into(),
        ));
        e.mtime = epoch;
        tree.insert(&path, e);
    }
    Ok(())
}

/// One colon-separated account file, as lines, with the base's entry attributes.
struct File {
    path: &'static str,
    lines: Vec<String>,
    entry: Option<Entry>,
}

impl File {
    fn read(tree: &Tree, path: &'static str) -> Result<File> {
        let text = tree.read(path)?.unwrap_or_default();
        Ok(File {
            path,
            lines: String::from_utf8_lossy(&text)
                .lines()
                .map(str::to_owned)
                .collect(),
            entry: tree.resolve(path).and_then(|p| tree.get(&p).cloned()),
        })
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.lines
            .iter()
            .position(|l| l.split(':').next() == Some(name))
    }

    fn field(line: &str, n: usize) -> Option<&str> {
        line.split(':').nth(n)
    }

    /// Ids in field 3 (uid in passwd, gid in group).
    fn ids(&self) -> BTreeSet<u32> {
        self.lines
            .iter()
            .filter_map(|l| Self::field(l, 2)?.parse().ok())
            .collect()
    }

    fn name_of(&self, id: u32) -> Option<String> {
        self.lines
            .iter()
            .find(|l| Self::field(l, 2).and_then(|f| f.parse().ok()) == Some(id))
            .and_then(|l| Self::field(l, 0).map(str::to_owned))
    }

    fn id_of(&self, name: &str) -> Option<u32> {
        self.find(name)
            .and_then(|i| Self::field(&self.lines[i], 2)?.parse().ok())
    }

    fn push(&mut self, line: String) {
        self.lines.push(line);
    }

    /// Adds `user` to the member list (field 4) of group `group`; false if no such group.
    fn add_member(&mut self, group: &str, user: &str) -> bool {
        let Some(i) = self.find(group) else {
            return false;
        };
        let mut f: Vec<String> = self.lines[i].split(':').map(str::to_owned).collect();
        f.resize(f.len().max(4), String::new());
        let mut members: Vec<&str> = f[3].split(',').filter(|m| !m.is_empty()).collect();
        if !members.contains(&user) {
            members.push(user);
        }
        f[3] = members.join(",");
        self.lines[i] = f.join(":");
        true
    }

    /// Sets the password field (field 2) of `name`, if it has a line.
    fn set_password(&mut self, name: &str, value: &str) {
        if let Some(i) = self.find(name) {
            let mut f: Vec<&str> = self.lines[i].split(':').collect();
            if f.len() > 1 {
                f[1] = value;
                self.lines[i] = f.join(":");
            }
        }
    }

    /// Writes the file back with the base's owner and mode (or `mode`, root:`gid`, if new).
    fn write(&self, tree: &mut Tree, epoch: i64, mode: u32, gid: u32) {
        let text: String = self.lines.iter().map(|l| format!("{l}\n")).collect();
        let mut e = self.entry.clone().unwrap_or_else(|| {
            let mut e = Entry::file(Vec::new(), mode, epoch);
            e.gid = gid;
            e
        });
        e.kind = Kind::File(super::Content::Bytes(text.into_bytes().into()));
        e.mtime = epoch;
        let path = tree.resolve(self.path).unwrap_or_else(|| self.path.into());
        tree.insert(&path, e);
    }
}

/// The four account files.
struct Db {
    passwd: File,
    group: File,
    shadow: File,
    gshadow: File,
}

impl Db {
    fn read(tree: &Tree) -> Result<Db> {
        Ok(Db {
            passwd: File::read(tree, "etc/passwd")?,
            group: File::read(tree, "etc/group")?,
            shadow: File::read(tree, "etc/shadow")?,
            gshadow: File::read(tree, "etc/gshadow")?,
        })
    }

    fn lock_root(&mut self) {
        self.shadow.set_password("root", LOCKED);
    }

    /// Writes every file back; shadow files that did not exist are made 0640 root:shadow,
    /// as Debian has them.
    fn write(&self, tree: &mut Tree, epoch: i64) {
        let shadow_gid = self.group.id_of("shadow").unwrap_or(0);
        self.passwd.write(tree, epoch, 0o644, 0);
        self.group.write(tree, epoch, 0o644, 0);
        for f in [&self.shadow, &self.gshadow] {
            if f.entry.is_some() || !f.lines.is_empty() {
                f.write(tree, epoch, 0o640, shadow_gid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Arch;
    use crate::testing::synthetic_base_tar_with_packages;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKqgF6LkowDlR0Cw91FyTwbjG8n14roD7C7XW2antTHi ops@laptop";
    const EPOCH: i64 = 1_767_225_600; // 2026-01-01: day 20454

    fn tree_with(packages: &[(&str, &str)]) -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("base.tar");
        std::fs::write(&p, synthetic_base_tar_with_packages(Arch::Amd64, packages)).unwrap();
        let t = Tree::from_tar(&p).unwrap();
        (dir, t)
    }

    fn user(name: &str) -> UserSpec {
        UserSpec {
            name: name.into(),
            uid: None,
            gid: None,
            group: None,
            groups: Vec::new(),
            ssh_keys: Vec::new(),
            shell: None,
            home: format!("/home/{name}"),
            sudo: false,
            at: "profiles/t.toml:9".into(),
        }
    }

    fn located(name: &str, line: u32) -> Located {
        Located {
            name: name.into(),
            at: format!("profiles/t.toml:{line}"),
        }
    }

    fn text(t: &Tree, path: &str) -> String {
        String::from_utf8(t.read(path).unwrap().unwrap()).unwrap()
    }

    fn err(t: &mut Tree, users: &[UserSpec]) -> String {
        let e = apply_users(t, users, EPOCH).unwrap_err();
        format!("{e:#} / hint: {:?}", crate::error::hints(&e))
    }

    #[test]
    fn uids_are_allocated_in_profile_order_skipping_used_and_reserved_ids() {
        let run = || {
            let (d, mut t) = tree_with(&[]);
            let group = text(&t, "etc/group") + "lpadmin:x:1000:\n";
            t.insert("etc/group", Entry::file(group.into_bytes(), 0o644, 0));
            let b = UserSpec {
                uid: Some(1001),
                ..user("b")
            };
            let got = apply_users(&mut t, &[user("a"), b, user("c")], EPOCH).unwrap();
            (d, t, got)
        };
        let (_d, t, got) = run();
        let ids: Vec<_> = got
            .iter()
            .map(|a| (a.name.as_str(), a.uid, a.gid))
            .collect();
        assert_eq!(
            ids,
            [("a", 1002, 1002), ("b", 1001, 1001), ("c", 1003, 1003)]
        );
        let (_d2, t2, _) = run();
        for f in ["etc/passwd", "etc/group", "etc/shadow", "etc/gshadow"] {
            assert_eq!(text(&t, f), text(&t2, f), "{f} is the same on a rebuild");
        }
    }

    #[test]
    fn account_lines_are_appended_and_root_is_locked() {
        let (_d, mut t) = tree_with(&[("sudo", "1.9.16")]);
        let deploy = UserSpec {
            groups: vec![located("sudo", 12), located("users", 12)],
            ssh_keys: vec![KEY.into()],
            sudo: true,
            ..user("deploy")
        };
        apply_users(&mut t, &[deploy], EPOCH).unwrap();
        assert_eq!(
            text(&t, "etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\ndeploy:x:1000:1000::/home/deploy:/bin/bash\n"
        );
        assert_eq!(
            text(&t, "etc/shadow"),
            "root:!*:20454:0:99999:7:::\ndaemon:*:20454:0:99999:7:::\nwww-data:*:20454:0:99999:7:::\nnobody:*:20454:0:99999:7:::\ndeploy:!*:20454:0:99999:7:::\n"
        );
        assert_eq!(
            text(&t, "etc/group"),
            "root:x:0:\ndaemon:x:1:\nsudo:x:27:deploy\nwww-data:x:33:\nshadow:x:42:\nusers:x:100:deploy\nnogroup:x:65534:\ndeploy:x:1000:\n"
        );
        assert_eq!(
            text(&t, "etc/gshadow"),
            "root:*::\ndaemon:*::\nsudo:*::deploy\nwww-data:*::\nshadow:*::\nusers:*::deploy\nnogroup:*::\ndeploy:!::\n"
        );
        assert_eq!(t.get("etc/shadow").unwrap().mode, 0o640, "mode kept");
        let sudoers = t.get("etc/sudoers.d/imagebuild-deploy").unwrap();
        assert_eq!((sudoers.mode, sudoers.uid, sudoers.gid), (0o440, 0, 0));
        assert!(
            text(&t, "etc/sudoers.d/imagebuild-deploy")
                .ends_with("\ndeploy ALL=(ALL:ALL) NOPASSWD: ALL\n")
        );
    }

    #[test]
    fn home_has_skel_and_keys_owned_by_the_user() {
        let (_d, mut t) = tree_with(&[]);
        let u = UserSpec {
            ssh_keys: vec![KEY.into()],
            ..user("deploy")
        };
        apply_users(&mut t, &[u], EPOCH).unwrap();
        let attrs = |p: &str| {
            let e = t.get(p).unwrap_or_else(|| panic!("{p} missing"));
            (e.mode, e.uid, e.gid)
        };
        assert_eq!(attrs("home/deploy"), (0o700, 1000, 1000));
        assert_eq!(attrs("home/deploy/.bashrc"), (0o644, 1000, 1000));
        assert_eq!(attrs("home/deploy/.profile"), (0o644, 1000, 1000));
        assert_eq!(attrs("home/deploy/.ssh"), (0o700, 1000, 1000));
        assert_eq!(
            attrs("home/deploy/.ssh/authorized_keys"),
            (0o600, 1000, 1000)
        );
        assert_eq!(
            text(&t, "home/deploy/.ssh/authorized_keys"),
            format!("{KEY}\n")
        );
        assert_eq!(text(&t, "home/deploy/.bashrc"), "# ~/.bashrc\n");
    }

    #[test]
    fn sshd_gets_the_key_only_drop_in() {
        let (_d, mut t) = tree_with(&[]);
        apply_users(&mut t, &[], EPOCH).unwrap();
        assert_eq!(text(&t, SSHD_DROPIN), SSHD_SETTINGS);
        assert!(
            text(&t, "etc/ssh/sshd_config").contains("\nInclude /etc/ssh/sshd_config.d/*.conf\n")
        );
        assert!(text(&t, "etc/shadow").starts_with("root:!*:"));
    }

    #[test]
    fn an_sshd_config_without_the_include_gets_it_first() {
        let (_d, mut t) = tree_with(&[]);
        t.insert(
            "etc/ssh/sshd_config",
            Entry::file(b"PasswordAuthentication yes\n".to_vec(), 0o644, 0),
        );
        apply_users(&mut t, &[], EPOCH).unwrap();
        assert_eq!(
            text(&t, "etc/ssh/sshd_config"),
            "Include /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication yes\n"
        );
    }

    #[test]
    fn bad_users_name_the_profile_line() {
        let (_d, mut t) = tree_with(&[]);
        let u = UserSpec {
            groups: vec![located("docker", 14)],
            ..user("deploy")
        };
        let e = err(&mut t, &[u]);
        assert!(
            e.starts_with(
                "profiles/t.toml:14: [[user]] deploy: group \"docker\" does not exist in the image"
            ),
            "{e}"
        );
        assert!(e.contains("docker: docker.io"), "{e}");

        let (_d, mut t) = tree_with(&[]);
        let u = UserSpec {
            groups: vec![located("sudo", 14)],
            sudo: true,
            ..user("deploy")
        };
        let e = err(&mut t, &[u]);
        assert!(
            e.contains(
                "profiles/t.toml:9: [[user]] deploy has sudo, but the image has no sudo package"
            ),
            "{e}"
        );
        assert!(e.contains("add \\\"sudo\\\" to [packages] include"), "{e}");

        let (_d, mut t) = tree_with(&[]);
        let e = err(&mut t, &[user("www-data")]);
        assert!(
            e.contains("www-data: the image already has this user"),
            "{e}"
        );

        let (_d, mut t) = tree_with(&[]);
        let u = UserSpec {
            uid: Some(33),
            ..user("web")
        };
        let e = err(&mut t, &[u]);
        assert!(e.contains("uid 33 is already www-data's"), "{e}");

        let (_d, mut t) = tree_with(&[]);
        let u = UserSpec {
            shell: Some("/usr/bin/zsh".into()),
            ..user("z")
        };
        let e = err(&mut t, &[u]);
        assert!(e.contains("shell /usr/bin/zsh is not in the image"), "{e}");
    }

    #[test]
    fn an_existing_group_can_be_the_primary_group() {
        let (_d, mut t) = tree_with(&[]);
        let u = UserSpec {
            group: Some(located("users", 10)),
            ..user("ann")
        };
        let got = apply_users(&mut t, &[u], EPOCH).unwrap();
        assert_eq!((got[0].uid, got[0].gid), (1000, 100));
        assert!(!text(&t, "etc/group").contains("ann"));
    }
}
