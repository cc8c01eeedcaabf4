//! A byte range of a file as a `Read + Write + Seek` stream: one partition of a disk image
//! (or of a disk), for code that wants a whole filesystem, such as `fatfs`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use anyhow::{Result, ensure};

/// `size` bytes at `offset` of a file, with its own position (positioned I/O, so it never
/// moves or depends on the file's shared cursor). Reads stop at the end of the range,
/// writes past it fail; a read-only range refuses every write.
#[derive(Debug)]
pub struct FileRange<'a> {
    file: &'a File,
    offset: u64,
    size: u64,
    pos: u64,
    writable: bool,
}

impl<'a> FileRange<'a> {
    /// A range that can be read and written.
    pub fn new(file: &'a File, offset: u64, size: u64) -> Result<Self> {
        Self::with_access(file, offset, size, true)
    }

    /// A range that refuses writes.
    pub fn read_only(file: &'a File, offset: u64, size: u64) -> Result<Self> {
        Self::with_access(file, offset, size, false)
    }

    fn with_access(file: &'a File, offset: u64, size: u64, writable: bool) -> Result<Self> {
        ensure!(
            offset.checked_add(size).is_some(),
            "file range at {offset} with {size} bytes overflows"
        );
        Ok(FileRange {
            file,
            offset,
            size,
            pos: 0,
            writable,
        })
    }

    /// How many of `want` bytes fit between the position and the end of the range.
    fn room(&self, want: usize) -> usize {
        usize::try_from(self.size.saturating_sub(self.pos)).map_or(want, |left| left.min(want))
    }
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        let read = self.file.read_at(&mut buf[..n], self.offset + self.pos)?;
        self.pos += read as u64;
        Ok(read)
    }
}

impl Write for FileRange<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the file range is read-only",
            ));
        }
        let n = self.room(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the file range",
            ));
        }
        let written = self.file.write_at(&buf[..n], self.offset + self.pos)?;
        self.pos += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for FileRange<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            SeekFrom::Start(p) => (p, 0),
            SeekFrom::Current(d) => (self.pos, d),
            SeekFrom::End(d) => (self.size, d),
        };
        let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "seek outside the file range");
        let pos = base.checked_add_signed(delta).ok_or_else(invalid)?;
        if pos > self.size {
            return Err(invalid());
        }
        self.pos = pos;
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let temp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(temp.path(), bytes).unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .open(temp.path())
            .unwrap();
        (temp, file)
    }

    #[test]
    fn reads_and_writes_stay_inside_the_range() {
        let (temp, file) = file_of(b"0123456789");
        let mut r = FileRange::new(&file, 2, 5).unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"23456");
        r.seek(SeekFrom::Start(3)).unwrap();
        assert_eq!(r.write(b"abcd").unwrap(), 2, "cut at the end of the range");
        assert_eq!(r.write(b"x").unwrap_err().kind(), io::ErrorKind::WriteZero);
        assert_eq!(std::fs::read(temp.path()).unwrap(), b"01234ab789");
        assert!(r.seek(SeekFrom::End(1)).is_err());
        assert_eq!(r.seek(SeekFrom::End(-1)).unwrap(), 4);
    }

    #[test]
    fn a_read_only_range_refuses_writes() {
        let (temp, file) = file_of(b"0123456789");
        let mut r = FileRange::read_only(&file, 0, 10).unwrap();
        assert_eq!(
            r.write(b"x").unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        assert_eq!(std::fs::read(temp.path()).unwrap(), b"0123456789");
        assert!(FileRange::new(&file, u64::MAX, 1).is_err());
    }
}
