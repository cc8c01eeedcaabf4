//! Architecture check: every ELF file in the image must be for the target machine.

use anyhow::Result;
use goblin::elf::header::{EM_BPF, EM_NONE};

use super::{Kind, Tree};
use crate::error::UserError;
use crate::profile::Arch;

/// Fails naming the ELF files built for another architecture (BPF objects are allowed).
pub fn check_architecture(tree: &Tree, arch: Arch) -> Result<usize> {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (path, e) in tree.entries() {
        let Kind::File(c) = &e.kind else { continue };
        let head = tree.head(c, 64)?;
        let Some(machine) = elf_machine(&head) else {
            continue;
        };
        checked += 1;
        if machine != arch.elf_machine() && machine != EM_BPF && machine != EM_NONE {
            wrong.push(format!(
                "/{path} ({})",
                goblin::elf::header::machine_to_str(machine)
            ));
        }
    }
    if wrong.is_empty() {
        return Ok(checked);
    }
    let n = wrong.len();
    let shown: Vec<_> = wrong.into_iter().take(5).collect();
    Err(UserError::invalid(format!(
        "{n} ELF file(s) are not for {arch}: {}{}",
        shown.join(", "),
        if n > 5 { ", ..." } else { "" }
    ))
    .hint(format!("remove them from the overlay or base, or set arch to the architecture they were built for (image arch is {arch})"))
    .into())
}

/// e_machine of an ELF header, or None if `head` is not ELF.
fn elf_machine(head: &[u8]) -> Option<u16> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return None;
    }
    match goblin::elf::Elf::parse_header(head) {
        Ok(h) => Some(h.e_machine),
        // A truncated or odd header: read e_machine directly (little- or big-endian).
        Err(_) => {
            let b = [head[18], head[19]];
            Some(if head[5] == 2 {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fake_elf;
    use crate::tree::Entry;

    #[test]
    fn foreign_binary_is_named() {
        let mut t = Tree::new();
        t.insert(
            "usr/bin/good",
            Entry::file(fake_elf(Arch::Arm64.elf_machine()), 0o755, 0),
        );
        t.insert(
            "usr/bin/bad",
            Entry::file(fake_elf(Arch::Amd64.elf_machine()), 0o755, 0),
        );
        t.insert("usr/lib/x.bpf.o", Entry::file(fake_elf(EM_BPF), 0o644, 0));
        t.insert("etc/motd", Entry::file(b"hello".to_vec(), 0o644, 0));
        let err = check_architecture(&t, Arch::Arm64).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("1 ELF file(s) are not for arm64: /usr/bin/bad"),
            "{msg}"
        );
        t.remove("usr/bin/bad");
        assert_eq!(check_architecture(&t, Arch::Arm64).unwrap(), 2);
    }
}
