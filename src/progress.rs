//! Progress reporting: the library says which stage it is in and what it is doing; the CLI
//! decides how to show it (bars on a terminal, plain lines elsewhere, nothing with --quiet).

use std::time::{Duration, Instant};

/// `eprintln!` that never panics: a closed or full stderr (`imagebuild build P 2>&1 | head`)
/// loses the line, and the build goes on.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics (see [`say!`]).
#[macro_export]
macro_rules! say_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut e = std::io::stderr();
        let _ = write!(e, $($arg)*);
        let _ = e.flush();
    }};
}

/// `println!` that never panics: a closed stdout (`| head`) loses the rest.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// One running stage.
pub trait Stage {
    /// A short note about what the stage is doing now.
    fn message(&self, msg: &str);
}

/// Something that shows stages.
pub trait Reporter {
    /// A stage starts.
    fn start(&self, name: &str) -> Box<dyn Stage + '_>;
    /// The stage ended after `took`, with a one-line result.
    fn finish(&self, name: &str, took: Duration, summary: &str);
}

/// Shows nothing.
pub struct Silent;

struct Nothing;

impl Stage for Nothing {
    fn message(&self, _: &str) {}
}

impl Reporter for Silent {
    fn start(&self, _: &str) -> Box<dyn Stage + '_> {
        Box::new(Nothing)
    }
    fn finish(&self, _: &str, _: Duration, _: &str) {}
}

/// Wall time of each stage, in order.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Timings(pub Vec<(String, f64)>);

impl Timings {
    /// Runs `f` as stage `name`, recording its wall time.
    pub fn stage<T>(
        &mut self,
        reporter: &dyn Reporter,
        name: &str,
        f: impl FnOnce(&dyn Stage) -> anyhow::Result<(T, String)>,
    ) -> anyhow::Result<T> {
        let t0 = Instant::now();
        let stage = reporter.start(name);
        let (value, summary) = f(stage.as_ref())?;
        drop(stage);
        let took = t0.elapsed();
        reporter.finish(name, took, &summary);
        self.0.push((name.to_string(), took.as_secs_f64()));
        Ok(value)
    }
}
