//! The signed-channel rule: a channel that served signatures before must keep doing so, or an
//! attacker who can answer for the server could offer an old, vulnerable build unsigned.

use butler_updater::{CheckResult, Error, ErrorKind, Step, Updater, Want};

use super::history::History;

/// Applies the rule to a successful check: refuses an unsigned LATEST on a channel that was
/// signed, and from then on requires signatures for the rest of this update (the manifest and
/// the archive). Remembers a channel the first time it is seen signed.
pub(super) async fn enforce_signed_channel(
    updater: &mut Updater,
    history: &History,
    want: &Want,
    check: CheckResult,
) -> Result<CheckResult, Error> {
    // A signed answer under a signature requirement is what the rule would ask for anyway:
    // then the database need not be waited for.
    let settled = check.signed && updater.source.require_signature;
    if !settled && history.channel_was_signed().await {
        if matches!(want, Want::Latest) && !check.signed {
            return Err(Error {
                step: Step::Verify,
                kind: ErrorKind::Unsigned(format!(
                    "LATEST for {} came without a signature, but this channel served signatures before",
                    check.channel
                )),
            });
        }
        updater.source.require_signature = true;
    }
    if check.signed {
        history.remember_signed().await;
    }
    Ok(check)
}
