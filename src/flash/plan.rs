//! What a flash writes, in which order, and how the result is checked.
//!
//! The order makes an interrupted flash harmless: the target's first MiB (protective MBR,
//! primary GPT) and its backup GPT are zeroed first, then the image's partitions are
//! written (data ranges copied, the holes between them zeroed, never left with old data),
//! then the rest of the first MiB, the backup GPT, and last the protective MBR with the
//! primary GPT. Until those last two writes the disk has no partition table at all, and
//! between them only a backup without a protective MBR, which neither the kernel nor UEFI
//! firmware reads: nothing boots or mounts a half-written disk.
//!
//! On a disk larger than the image the backup GPT goes to the disk's end (the OS sees the
//! whole disk; the root grows into it on first boot), and partitions of the target that the
//! image names as its state (see `[[state]]`) keep their table entries and their bytes.
//! Either way the check reads the target back and rebuilds the image's own bytes from it
//! (the GPT put back to the image's size): their sha256 must be the release's.

use std::ops::Range;

use anyhow::{Result, bail};

use super::gpt::{BACKUP_BYTES, Entry, Gpt, PRIMARY_BYTES, SECTOR};
use crate::error::UserError;
use crate::size::{Bytes, MIB};

/// One step, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Zero these bytes of the target (discarded where that reads back as zeros).
    Zero(Range<u64>),
    /// Copy the image's bytes in this range to the same place on the target.
    Copy(Range<u64>),
    /// Write these bytes at this offset.
    Write(u64, Vec<u8>),
    /// Make everything so far durable before going on.
    Sync,
}

/// The image as flash reads it.
pub struct Source {
    pub len: u64,
    pub gpt: Gpt,
    /// The image's first [`PRIMARY_BYTES`] and its last [`BACKUP_BYTES`] bytes, and whether
    /// the bytes between the last partition and the backup are zeros.
    pub primary: Vec<u8>,
    pub backup: Vec<u8>,
    pub gap_is_zero: bool,
    /// Where the image holds data (SEEK_DATA), in order.
    pub data: Vec<Range<u64>>,
}

/// The GPT written for the target instead of the image's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The target's first [`PRIMARY_BYTES`].
    pub primary: Vec<u8>,
    /// The target's last [`BACKUP_BYTES`].
    pub backup: Vec<u8>,
    /// The image's last usable LBA, to put the table back for the check.
    pub image_last_usable: u64,
    /// Entries of the target kept in the new table, and the slots they got.
    pub kept: Vec<Entry>,
}

/// A flash: the steps and what the result must read back as.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub image_len: u64,
    pub target_len: u64,
    /// Where the image's first partition starts: the "first MiB", written last.
    pub head: u64,
    /// Where its last partition ends.
    pub data_end: u64,
    pub moved: Option<Moved>,
    /// Why the GPT is written as it is in the image although the target is larger.
    pub not_moved: Option<String>,
}

impl Plan {
    /// Bytes copied from the image, and bytes zeroed.
    pub fn totals(&self) -> (u64, u64) {
        let mut copy = 0;
        let mut zero = 0;
        for s in &self.steps {
            match s {
                Step::Copy(r) => copy += r.end - r.start,
                Step::Write(_, b) => copy += b.len() as u64,
                Step::Zero(r) => zero += r.end - r.start,
                Step::Sync => {}
            }
        }
        (copy, zero)
    }
}

/// Plans writing `src` to a target of `target_len` bytes whose first sectors are
/// `target_head` (none for a new file), keeping its partitions named in `states`. Holes
/// in the image shorter than `coalesce` bytes are copied rather than zeroed (fewer steps
/// for a remote pipeline).
pub fn plan(
    src: &Source,
    target_len: u64,
    target_head: Option<&[u8]>,
    states: &[String],
    coalesce: u64,
) -> Result<Plan> {
    let len = src.len;
    if target_len < len {
        bail!(
            "the target ({}) is smaller than the image ({})",
            Bytes(target_len),
            Bytes(len)
        );
    }
    let first = src
        .gpt
        .entries
        .iter()
        .map(|e| e.first_lba * SECTOR)
        .min()
        .unwrap_or(MIB);
    let head = first.clamp(PRIMARY_BYTES as u64, MIB);
    let data_end = src.gpt.data_end();
    let kept = kept_entries(src, target_len, target_head, states, data_end)?;
    let movable = movable(src);
    let wants_move = target_len != len || !kept.is_empty();
    let (moved, not_moved) = match (wants_move, movable) {
        (false, _) => (None, None),
        (true, Ok(())) => (Some(moved(src, target_len, kept)), None),
        (true, Err(why)) if kept.is_empty() => (None, Some(why)),
        (true, Err(why)) => bail!(
            "the target keeps state partitions, but the image's GPT cannot be rewritten for it: {why}"
        ),
    };
    let mut steps = vec![Step::Zero(0..head)];
    let backup_at = target_len - BACKUP_BYTES as u64;
    // Whatever backup GPT the target has goes too.
    steps.push(Step::Zero(backup_at.max(data_end)..target_len));
    steps.push(Step::Sync);
    steps.extend(body(&src.data, head..data_end, coalesce));
    // Last, in this order: the rest of the first MiB, the backup GPT, and the protective
    // MBR with the primary GPT.
    let (backup, primary) = match &moved {
        Some(m) => {
            let kept_start = m
                .kept
                .iter()
                .map(|e| e.bytes().start)
                .min()
                .unwrap_or(u64::MAX);
            let gap_end = len.min(kept_start).min(backup_at);
            if gap_end > data_end {
                steps.push(Step::Zero(data_end..gap_end));
            }
            (
                Step::Write(backup_at, m.backup.clone()),
                Step::Write(0, m.primary.clone()),
            )
        }
        None => {
            let own_backup = len - BACKUP_BYTES as u64;
            if own_backup > data_end {
                steps.push(Step::Copy(data_end..own_backup));
            }
            (
                Step::Copy(own_backup..len),
                Step::Copy(0..PRIMARY_BYTES as u64),
            )
        }
    };
    if head > PRIMARY_BYTES as u64 {
        steps.push(Step::Copy(PRIMARY_BYTES as u64..head));
    }
    steps.push(Step::Sync);
    steps.push(backup);
    steps.push(Step::Sync);
    steps.push(primary);
    steps.push(Step::Sync);
    Ok(Plan {
        steps,
        image_len: len,
        target_len,
        head,
        data_end,
        moved,
        not_moved,
    })
}

/// The partitions of the target's table that are the image's state, checked to lie
/// beyond the image's partitions and before the backup GPT; each in a free slot.
fn kept_entries(
    src: &Source,
    target_len: u64,
    target_head: Option<&[u8]>,
    states: &[String],
    data_end: u64,
) -> Result<Vec<Entry>> {
    if states.is_empty() {
        return Ok(Vec::new());
    }
    let Some(table) = target_head.and_then(|h| Gpt::parse(h).ok()) else {
        return Ok(Vec::new());
    };
    let mut free = src.gpt.free_slots();
    let mut kept = Vec::new();
    for e in table.entries.iter().filter(|e| states.contains(&e.name)) {
        let r = e.bytes();
        if r.start < data_end {
            return Err(UserError::invalid(format!(
                "the target's state partition {} (bytes {}..{}) overlaps the image, whose \
                 partitions end at byte {data_end}: flashing would destroy it; nothing was written",
                e.name, r.start, r.end
            ))
            .hint("flash an image of the same layout (the same [image] size), or move the state off this disk first")
            .into());
        }
        if r.end > target_len - BACKUP_BYTES as u64 {
            bail!("the target's partition {} runs into its backup GPT", e.name);
        }
        let slot = if src.gpt.entries.iter().any(|i| i.slot == e.slot) {
            free.next().unwrap_or(e.slot)
        } else {
            e.slot
        };
        kept.push(Entry { slot, ..e.clone() });
    }
    Ok(kept)
}

/// Whether the image's GPT is the standard layout flash can rewrite for another disk and
/// put back: its backup is what the primary implies, at the image's end, after zeros.
fn movable(src: &Source) -> Result<(), String> {
    if !src.gap_is_zero {
        return Err("the image holds data between its last partition and its backup GPT".into());
    }
    if Gpt::backup_for(&src.primary, src.len) != src.backup {
        return Err("the image's backup GPT is not the copy of its primary one".into());
    }
    if src.gpt.primary_for(src.len, src.gpt.last_usable, &[]) != src.primary {
        return Err("the image's GPT does not describe the image's own size".into());
    }
    Ok(())
}

fn moved(src: &Source, target_len: u64, kept: Vec<Entry>) -> Moved {
    let last_usable = target_len / SECTOR - 34;
    let primary = src.gpt.primary_for(target_len, last_usable, &kept);
    Moved {
        backup: Gpt::backup_for(&primary, target_len),
        primary,
        image_last_usable: src.gpt.last_usable,
        kept,
    }
}

/// The image's partitions: its data ranges inside `span` copied, the holes between them
/// zeroed; holes shorter than `coalesce` are copied along.
fn body(data: &[Range<u64>], span: Range<u64>, coalesce: u64) -> Vec<Step> {
    let mut copies: Vec<Range<u64>> = Vec::new();
    for r in data {
        let r = r.start.max(span.start)..r.end.min(span.end);
        if r.start >= r.end {
            continue;
        }
        match copies.last_mut() {
            Some(last) if r.start - last.end < coalesce => last.end = r.end,
            _ => copies.push(r),
        }
    }
    let mut steps = Vec::new();
    let mut pos = span.start;
    for c in copies {
        if c.start > pos {
            steps.push(Step::Zero(pos..c.start));
        }
        steps.push(Step::Copy(c.clone()));
        pos = c.end;
    }
    if span.end > pos {
        steps.push(Step::Zero(pos..span.end));
    }
    steps
}

impl Plan {
    /// The image's first `head` bytes and its bytes from the last partition's end to its
    /// end, rebuilt from the target's first `head` bytes as read back: the table put back to
    /// the image's size without the kept entries. With the GPT not moved, none (the target
    /// holds them as they are).
    pub fn image_ends_from(&self, read_head: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let Some(m) = &self.moved else {
            return Ok(None);
        };
        let slots: Vec<usize> = m.kept.iter().map(|e| e.slot).collect();
        let table = Gpt::parse(read_head)
            .map_err(|e| anyhow::anyhow!("the target's GPT read back is not valid: {e}"))?
            .without(&slots);
        let primary = table.primary_for(self.image_len, m.image_last_usable, &[]);
        let mut head = read_head.to_vec();
        head[..PRIMARY_BYTES].copy_from_slice(&primary);
        let gap = self.image_len - BACKUP_BYTES as u64 - self.data_end;
        let mut tail = vec![0u8; usize::try_from(gap)?];
        tail.extend_from_slice(&Gpt::backup_for(&primary, self.image_len));
        Ok(Some((head, tail)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flash::gpt::tests::image_bytes;

    pub(crate) fn source_of(img: &[u8]) -> Source {
        let len = img.len() as u64;
        let gpt = Gpt::parse(img).unwrap();
        let d = gpt.data_end() as usize;
        let b = img.len() - BACKUP_BYTES;
        Source {
            len,
            gap_is_zero: img[d..b].iter().all(|x| *x == 0),
            primary: img[..PRIMARY_BYTES].to_vec(),
            backup: img[b..].to_vec(),
            gpt,
            data: std::iter::once(0..len).collect(),
        }
    }

    #[test]
    fn the_first_mib_is_written_last_and_the_backup_before_it() {
        /// The steps, with written bytes shown by their length.
        fn kinds(p: &Plan) -> Vec<String> {
            p.steps
                .iter()
                .map(|s| match s {
                    Step::Write(at, b) => format!("Write({at}, {} bytes)", b.len()),
                    other => format!("{other:?}"),
                })
                .collect()
        }
        let img = image_bytes(8 * MIB);
        let src = source_of(&img);
        let (len, p) = (src.len, plan(&src, src.len, None, &[], 0).unwrap());
        assert!(p.moved.is_none());
        let k = kinds(&p);
        let n = k.len();
        assert_eq!(k[0], format!("{:?}", Step::Zero(0..MIB)));
        let backup = len - BACKUP_BYTES as u64;
        assert_eq!(
            k[n - 6..],
            [
                format!("{:?}", Step::Copy(PRIMARY_BYTES as u64..MIB)),
                "Sync".into(),
                format!("{:?}", Step::Copy(backup..len)),
                "Sync".into(),
                format!("{:?}", Step::Copy(0..PRIMARY_BYTES as u64)),
                "Sync".into(),
            ]
        );
        let big = 64 * MIB;
        let p = plan(&src, big, None, &[], 0).unwrap();
        let k = kinds(&p);
        let n = k.len();
        let at = big - BACKUP_BYTES as u64;
        assert_eq!(k[1], format!("{:?}", Step::Zero(at..big)));
        assert_eq!(
            k[n - 6..],
            [
                format!("{:?}", Step::Copy(PRIMARY_BYTES as u64..MIB)),
                "Sync".into(),
                format!("Write({at}, {BACKUP_BYTES} bytes)"),
                "Sync".into(),
                format!("Write(0, {PRIMARY_BYTES} bytes)"),
                "Sync".into(),
            ]
        );
    }

    #[test]
    fn holes_are_zeroed_and_short_ones_copied_along() {
        let data = [
            0..4096,
            10 * MIB..10 * MIB + 4096,
            10 * MIB + 8192..12 * MIB,
        ];
        assert_eq!(
            body(&data, MIB..16 * MIB, 64 * 1024),
            [
                Step::Zero(MIB..10 * MIB),
                Step::Copy(10 * MIB..12 * MIB),
                Step::Zero(12 * MIB..16 * MIB)
            ]
        );
        assert_eq!(body(&[], MIB..2 * MIB, 0), [Step::Zero(MIB..2 * MIB)]);
    }

    #[test]
    fn the_image_is_rebuilt_from_a_larger_target() {
        let img = image_bytes(8 * MIB);
        let src = source_of(&img);
        let p = plan(&src, 64 * MIB, None, &[], 0).unwrap();
        let m = p.moved.clone().unwrap();
        let mut head = img[..MIB as usize].to_vec();
        head[..PRIMARY_BYTES].copy_from_slice(&m.primary);
        let (h, t) = p.image_ends_from(&head).unwrap().unwrap();
        assert_eq!(h, img[..MIB as usize]);
        assert_eq!(t, img[p.data_end as usize..]);
    }

    /// A target whose table has the image's partitions and a state partition after them.
    fn target_with_state(img: &[u8], big: u64, state_start: u64, name: &str) -> Vec<u8> {
        let src = source_of(img);
        let mut raw = [0u8; 128];
        raw[..16].copy_from_slice(&[7; 16]);
        raw[16..32].copy_from_slice(&[9; 16]);
        raw[32..40].copy_from_slice(&(state_start / SECTOR).to_le_bytes());
        raw[40..48].copy_from_slice(&((state_start + 16 * MIB) / SECTOR - 1).to_le_bytes());
        for (i, u) in name.encode_utf16().enumerate() {
            raw[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        let e = Entry {
            slot: 2,
            first_lba: 0,
            last_lba: 0,
            name: name.into(),
            raw,
        };
        src.gpt.primary_for(big, big / SECTOR - 34, &[e])
    }

    #[test]
    fn state_partitions_keep_their_entry_and_bytes() {
        let img = image_bytes(8 * MIB);
        let src = source_of(&img);
        let big = 64 * MIB;
        let state_at = src.gpt.data_end();
        let head = target_with_state(&img, big, state_at, "srv-data");
        let p = plan(&src, big, Some(&head), &["srv-data".into()], 0).unwrap();
        let m = p.moved.as_ref().unwrap();
        assert_eq!(m.kept.len(), 1);
        let table = Gpt::parse(&m.primary).unwrap();
        assert_eq!(table.entries.len(), 3);
        assert_eq!(table.entries[2].name, "srv-data");
        // No step touches the state partition's bytes.
        let state = state_at..state_at + 16 * MIB;
        for s in &p.steps {
            let r = match s {
                Step::Zero(r) | Step::Copy(r) => r.clone(),
                Step::Write(at, b) => *at..*at + b.len() as u64,
                Step::Sync => continue,
            };
            assert!(
                r.end <= state.start || r.start >= state.end,
                "{s:?} touches the state"
            );
        }
        // The check still rebuilds the image's own bytes.
        let mut read = img[..MIB as usize].to_vec();
        read[..PRIMARY_BYTES].copy_from_slice(&m.primary);
        let (h, _) = p.image_ends_from(&read).unwrap().unwrap();
        assert_eq!(h, img[..MIB as usize]);
        // Without the label in the image's states, the partition is not kept.
        let p = plan(&src, big, Some(&head), &[], 0).unwrap();
        assert!(p.moved.unwrap().kept.is_empty());
    }

    #[test]
    fn an_image_that_would_overlap_the_state_is_refused() {
        let img = image_bytes(8 * MIB);
        let src = source_of(&img);
        let big = 64 * MIB;
        let head = target_with_state(&img, big, 4 * MIB, "srv-data");
        let err = plan(&src, big, Some(&head), &["srv-data".into()], 0).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "the target's state partition srv-data (bytes {}..{}) overlaps the image",
                4 * MIB,
                20 * MIB
            )),
            "{err}"
        );
    }
}
