//! The profile loader: TOML, `extends`, validation. The input is a profile `x` and, after
//! a NUL byte, its parent `base` (which `x` may extend).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (child, parent) = imagebuild_fuzz::split(data);
        let (dir, _) = imagebuild_fuzz::scratch(&[
            ("profiles/x.toml", child),
            ("profiles/base.toml", parent),
            ("overlays/o/etc/motd", b"hi\n"),
        ]);
        let project = imagebuild::profile::Project::new(dir.path());
        let _ = imagebuild::profile::Recipe::load(&project, "x");
    });
}
