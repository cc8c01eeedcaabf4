//! Byte sizes as written in profiles ("4G", "512M", "auto").

use std::fmt;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl Bytes {
    /// Parses "4G", "512M", "64MiB", "1048576". Binary units.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 4G or 512M"))?;
        let mult = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => KIB,
            "M" | "MB" | "MIB" => MIB,
            "G" | "GB" | "GIB" => GIB,
            "T" | "TB" | "TIB" => 1024 * GIB,
            _ => return Err(format!("`{s}` has an unknown unit; use K, M, G or T")),
        };
        n.checked_mul(mult)
            .map(Bytes)
            .ok_or_else(|| format!("`{s}` is too large"))
    }

    pub fn align_up(self, to: u64) -> Self {
        Bytes(self.0.div_ceil(to) * to)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= GIB {
            write!(f, "{:.2} GiB", b as f64 / GIB as f64)
        } else if b >= MIB {
            write!(f, "{:.1} MiB", b as f64 / MIB as f64)
        } else {
            write!(f, "{b} bytes")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(Bytes::parse("4G"), Ok(Bytes(4 * GIB)));
        assert_eq!(Bytes::parse("512M"), Ok(Bytes(512 * MIB)));
        assert_eq!(Bytes::parse("64MiB"), Ok(Bytes(64 * MIB)));
        assert_eq!(Bytes::parse("4096"), Ok(Bytes(4096)));
        assert!(Bytes::parse("4X").unwrap_err().contains("unknown unit"));
        assert!(Bytes::parse("G").is_err());
    }

    #[test]
    fn aligns() {
        assert_eq!(Bytes(1).align_up(MIB), Bytes(MIB));
        assert_eq!(Bytes(MIB).align_up(MIB), Bytes(MIB));
    }
}
