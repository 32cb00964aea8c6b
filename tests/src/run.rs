//! A tiny test runner (the netns tests share one expensive test bed): named cases, each isolated
//! by catch_unwind, and the plain closing line `N passed, M failed`.

use std::{panic, time::Instant};

pub struct Runner {
    passed: usize,
    failed: Vec<String>,
    filter: Option<String>,
}

pub enum Outcome {
    Passed,
    Failed,
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

impl Runner {
    pub fn new() -> Self {
        // `cargo test -p tests -- NAME` runs the cases whose name contains NAME.
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        Runner { passed: 0, failed: Vec::new(), filter }
    }

    pub fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }

    pub fn case(&mut self, name: &str, body: impl FnOnce()) -> Outcome {
        if !self.wants(name) {
            return Outcome::Passed;
        }
        self.run(name, body)
    }

    fn run(&mut self, name: &str, body: impl FnOnce()) -> Outcome {
        let started = Instant::now();
        let result = panic::catch_unwind(panic::AssertUnwindSafe(body));
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("test {name} ... ok ({secs:.1}s)");
                Outcome::Passed
            }
            Err(_) => {
                self.failed.push(name.to_string());
                println!("test {name} ... FAILED ({secs:.1}s)");
                Outcome::Failed
            }
        }
    }

    /// Set-up that counts as a case: `None` (and a failure) when it panics.
    pub fn setup<T>(&mut self, name: &str, body: impl FnOnce() -> T) -> Option<T> {
        let mut out = None;
        // Set-up runs whatever the filter: the cases that are wanted need it.
        match self.run(name, || out = Some(body())) {
            Outcome::Passed => out,
            Outcome::Failed => None,
        }
    }

    /// Print the summary; the process exits non-zero when a case failed.
    pub fn finish(self) -> ! {
        for name in &self.failed {
            println!("failed: {name}");
        }
        println!("{} passed, {} failed", self.passed, self.failed.len());
        std::process::exit(if self.failed.is_empty() { 0 } else { 1 });
    }
}
