//! The Compose file parser.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = imagebuild::stack::compose::parse(text);
        }
    });
}
