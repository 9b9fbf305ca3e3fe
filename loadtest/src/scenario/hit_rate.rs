//! hit_rate

use super::{Ctx, Outcome};

pub(super) fn run(_ctx: &Ctx) -> Result<Outcome, String> {
    Err("not yet".into())
}
