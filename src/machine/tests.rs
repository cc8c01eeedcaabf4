use std::path::Path;
use std::process::Command;

use super::*;
use crate::disk::{Sizing, plan, write_partition_table};
use crate::ids::ImageIds;
use crate::inspect::Image;
use crate::profile::Arch;
use crate::size::MIB;

const ESP_SIZE: u64 = 40 * MIB;
const EPOCH: i64 = 1_767_225_600;
const UKI: &str = "EFI/BOOT/BOOTX64.EFI";
const DIR: &str = "EFI/BOOT/BOOTX64.EFI.extra.d";

fn uki_bytes() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// A GPT disk image with an ESP holding one UKI at `uki` (as a build makes it), in `dir`.
fn disk_image(dir: &Path, uki: &str) -> (std::path::PathBuf, File) {
    let path = dir.join("disk.raw");
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let ids = ImageIds::derive("machine-tests");
    let layout = plan(Arch::Amd64, &ids, ESP_SIZE, Sizing::Root(8 * MIB)).unwrap();
    write_partition_table(&file, &layout, ids.disk_guid).unwrap();
    let files = [EspFile {
        path: uki.into(),
        data: uki_bytes(),
    }];
    let esp = &layout.esp;
    fat::write_esp(&file, esp.start, esp.size, 7, "ESP", EPOCH, &files).unwrap();
    (path, file)
}

/// The ESP partition of the test disk, as a stream.
fn esp_range(file: &File) -> FileRange<'_> {
    let table = disk::read_table(file).unwrap();
    let esp = table
        .partitions
        .iter()
        .find(|p| p.type_guid == ESP_TYPE)
        .unwrap();
    FileRange::new(file, esp.start, esp.size).unwrap()
}

fn creds() -> Vec<Credential> {
    vec![
        hostname_credential("web-3").unwrap(),
        Credential::parse("imagebuild.test=hello").unwrap(),
    ]
}

/// The ESP's files, read back the way `imagebuild inspect` reads them.
fn esp_files(path: &Path) -> Vec<EspFile> {
    Image::open(path).unwrap().esp_files().unwrap()
}

/// `fsck.fat -n` on the ESP finds nothing to complain about (as the build's ESP).
fn assert_fsck_clean(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let region = &bytes[MIB as usize..(MIB + ESP_SIZE) as usize];
    let esp = path.with_extension("esp");
    std::fs::write(&esp, region).unwrap();
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(&esp)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        out.status.success() && lines.len() == 2 && lines[1].contains(" files, "),
        "fsck.fat -n complained:\n{text}"
    );
}

#[test]
fn credentials_land_next_to_the_uki_and_the_fat_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (path, file) = disk_image(dir.path(), UKI);
    let written = add_to_esp(esp_range(&file), UKI, &creds()).unwrap();
    assert_eq!(
        written,
        [
            format!("{DIR}/imagebuild.test.cred"),
            format!("{DIR}/system.hostname.cred")
        ]
    );
    let files = esp_files(&path);
    let got: Vec<(&str, &[u8])> = files
        .iter()
        .map(|f| (f.path.as_str(), f.data.as_slice()))
        .collect();
    let uki = uki_bytes();
    assert_eq!(
        got,
        [
            (UKI, uki.as_slice()),
            (written[0].as_str(), &b"hello"[..]),
            (written[1].as_str(), &b"web-3"[..]),
        ]
    );
    assert_fsck_clean(&path);
}

#[test]
fn add_to_disk_finds_the_esp_and_the_uki() {
    let dir = tempfile::tempdir().unwrap();
    let (path, file) = disk_image(dir.path(), "EFI/BOOT/BOOTAA64.EFI");
    let written = add_to_disk(&file, &creds()[..1]).unwrap();
    assert_eq!(
        written,
        ["EFI/BOOT/BOOTAA64.EFI.extra.d/system.hostname.cred"]
    );
    assert!(esp_files(&path).iter().any(|f| f.path == written[0]));
    assert_fsck_clean(&path);
}

#[test]
fn same_image_and_credentials_give_the_same_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (path_a, file_a) = disk_image(a.path(), UKI);
    let (path_b, file_b) = disk_image(b.path(), UKI);
    add_to_disk(&file_a, &creds()).unwrap();
    let mut reversed = creds();
    reversed.reverse();
    add_to_disk(&file_b, &reversed).unwrap();
    let bytes = std::fs::read(&path_a).unwrap();
    assert!(bytes == std::fs::read(&path_b).unwrap(), "two runs differ");
    add_to_disk(&file_a, &creds()).unwrap();
    assert!(
        bytes == std::fs::read(&path_a).unwrap(),
        "the same credentials again changed the image"
    );
}

#[test]
fn a_credential_given_again_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (path, file) = disk_image(dir.path(), UKI);
    for value in ["one", "two", "three"] {
        let c = Credential::parse(&format!("app.token={value}")).unwrap();
        add_to_disk(&file, &[c]).unwrap();
    }
    let creds: Vec<EspFile> = esp_files(&path)
        .into_iter()
        .filter(|f| f.path.starts_with(DIR))
        .collect();
    assert_eq!(
        creds,
        [EspFile {
            path: format!("{DIR}/app.token.cred"),
            data: b"three".to_vec()
        }]
    );
    assert_fsck_clean(&path);
}

#[test]
fn find_uki_wants_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_path, file) = disk_image(dir.path(), "EFI/BOOT/bootaa64.efi");
    assert_eq!(find_uki(esp_range(&file)).unwrap(), "EFI/BOOT/bootaa64.efi");
    let (_path, file) = disk_image(dir.path(), "EFI/Linux/other.efi");
    let err = find_uki(esp_range(&file)).unwrap_err();
    assert_eq!(err.to_string(), "the ESP has no EFI/BOOT/BOOT*.EFI");
}

#[test]
fn bad_requests_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (path, file) = disk_image(dir.path(), UKI);
    let before = std::fs::read(&path).unwrap();
    let twice = [
        Credential::parse("App.Token=a").unwrap(),
        Credential::parse("app.token=b").unwrap(),
    ];
    let err = add_to_esp(esp_range(&file), UKI, &twice).unwrap_err();
    assert!(
        err.to_string()
            .contains("credential App.Token and app.token is given more than once"),
        "{err:#}"
    );
    let err = add_to_esp(esp_range(&file), "EFI/BOOT/BOOTAA64.EFI", &creds()).unwrap_err();
    assert_eq!(err.to_string(), "the ESP has no EFI/BOOT/BOOTAA64.EFI");
    let big = |name: &str| Credential::new(name, vec![b'x'; 600 << 10]).unwrap();
    let err = add_to_esp(esp_range(&file), UKI, &[big("a"), big("b")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("1228800 bytes (0 of them already on the ESP)"),
        "{err:#}"
    );
    assert!(before == std::fs::read(&path).unwrap(), "the image changed");
    // One now and one later come to too much as well; replacing the first does not.
    add_to_esp(esp_range(&file), UKI, &[big("a")]).unwrap();
    let err = add_to_esp(esp_range(&file), UKI, &[big("b")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("(614400 of them already on the ESP)"),
        "{err:#}"
    );
    add_to_esp(esp_range(&file), UKI, &[big("A")]).unwrap();
}

#[test]
fn hostname_credentials_are_checked() {
    let c = hostname_credential("web-3").unwrap();
    assert_eq!(
        (c.name.as_str(), c.value.as_slice()),
        ("system.hostname", &b"web-3"[..])
    );
    let err = hostname_credential("Web_3").unwrap_err();
    assert_eq!(
        err.to_string(),
        "host name \"Web_3\" is not valid: 'W' is upper case; use lower case"
    );
    assert_eq!(crate::error::hints(&err), [HOSTNAME_HINT]);
}
