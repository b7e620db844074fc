//! What a command prints as its result: a line for people, or with `--json` one JSON document for
//! scripts (progress and prompts go to stderr either way, so stdout stays parseable).

use anyhow::Result;
use clap::Args;
use serde_json::Value;

/// `--json` on a command that prints data.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct Format {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Format {
    /// Prints `value` as JSON with `--json`, else `text`.
    pub fn print(self, value: &Value, text: impl FnOnce() -> String) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            println!("{}", text());
        }
        Ok(())
    }
}
