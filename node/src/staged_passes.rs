//! The node's background work over its staged volumes (`background_grow`,
//! `usage_report`): a pass every interval over this node's own staging
//! records, so its cost follows the volumes staged here, never the
//! cluster's; what a pass keeps of a volume is dropped once the volume is
//! no longer staged, and the loop ends once the node (the last `Arc` of
//! its context) is gone.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use swell_storage::VolumeId;

use crate::NodeContext;

/// One kind of background pass.
pub(crate) trait StagedPass: Send + Sync + 'static {
    /// What the pass keeps of a volume from one pass to the next.
    type Kept: Send + 'static;
    /// Names the pass in logs.
    const NAME: &'static str;
    /// Looks at one staged volume; trouble is logged here, since a pass
    /// has no caller to answer.
    fn visit(&self, ctx: &NodeContext, volume: &VolumeId, kept: &mut HashMap<VolumeId, Self::Kept>) -> impl Future<Output = ()> + Send;
}

/// Runs `pass` over every volume staged here, every `interval`.
pub(crate) fn spawn<P: StagedPass>(ctx: &Arc<NodeContext>, interval: Duration, pass: P) {
    let ctx = Arc::downgrade(ctx);
    tokio::spawn(async move {
        let mut kept = HashMap::new();
        loop {
            tokio::time::sleep(interval).await;
            let Some(ctx) = ctx.upgrade() else { return };
            let volumes = match ctx.staging.staged().await {
                Ok(volumes) => volumes,
                Err(e) => {
                    tracing::warn!(pass = P::NAME, error = %e.full_message(), "cannot list the staged volumes");
                    continue;
                }
            };
            kept.retain(|volume, _| volumes.contains(volume));
            for volume in &volumes {
                pass.visit(&ctx, volume, &mut kept).await;
            }
        }
    });
}
