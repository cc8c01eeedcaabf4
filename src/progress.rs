//! Progress reporting: the library says which stage it is in and what it is doing; the CLI
//! decides how to show it (bars on a terminal, plain lines elsewhere, nothing with --quiet).

use std::time::{Duration, Instant};

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
