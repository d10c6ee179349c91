//! Progress of long steps (image builds), printed on stderr so that users see what is happening
//! and how long it took, even when stdout is captured or piped.

use std::time::Instant;

/// One named step. Prints when it starts and, on `done`, its elapsed time.
pub struct Step {
    label: String,
    started: Instant,
    shown: bool,
}

impl Step {
    pub fn start(label: impl Into<String>) -> Self {
        Self::start_if(true, label)
    }

    /// A step that prints only when `shown` (callers whose output is not for people, e.g. the
    /// test harness, stay quiet).
    pub fn start_if(shown: bool, label: impl Into<String>) -> Self {
        let label = label.into();
        if shown {
            eprintln!("[bottle] {label} ...");
        }
        Step {
            label,
            started: Instant::now(),
            shown,
        }
    }

    /// A line of detail inside the step (a build step, a download).
    pub fn detail(&self, line: &str) {
        if self.shown {
            eprintln!("[bottle]   {line}");
        }
    }

    pub fn done(self) {
        if !self.shown {
            return;
        }
        eprintln!(
            "[bottle] {} done in {:.1}s",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }
}
