//! Scenarios.

/// Arguments of `loadtest scenario`.
#[derive(clap::Args)]
pub struct ScenarioArgs {
    /// Scenario name.
    pub name: String,
}

/// Runs a scenario.
pub fn main(_a: ScenarioArgs) -> Result<(), String> {
    Err("todo".into())
}
